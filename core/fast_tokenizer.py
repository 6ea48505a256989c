"""A Hugging Face fast tokenizer read straight from ``tokenizer.json``, without transformers.

The ONNX Runtime backend tokenizes with :class:`FastTokenizer` instead of
``transformers.AutoTokenizer``: importing transformers imports torch wherever torch is installed
(hundreds of MB of memory and seconds of start-up), and scoring with ONNX Runtime needs neither.
A transformers fast tokenizer is a thin shell around the same ``tokenizers`` object built from the
same ``tokenizer.json``, so both give the same token ids, type ids, windows and offsets; this class
answers the subset of its call interface that the shared encoding layer
(:class:`~rerank_core.encoding.TokenizedReranker`), the readability check and the server use.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["FastTokenizer"]

# transformers' "no limit" for a tokenizer whose config sets no model_max_length
_NO_LIMIT = int(1e30)
_SPECIAL_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


def _content(token: Any) -> str | None:
    if isinstance(token, str):
        return token
    if isinstance(token, Mapping) and isinstance(token.get("content"), str):
        return str(token["content"])
    return None


class FastTokenizer:
    """A ``tokenizers.Tokenizer`` with the call interface of a transformers fast tokenizer.

    Args:
        tokenizer: The loaded ``tokenizers.Tokenizer``.
        config: The model's ``tokenizer_config.json`` (special tokens, ``model_max_length``,
            ``padding_side``, ``truncation_side``, ``model_input_names``), merged with
            ``special_tokens_map.json`` where the folder has one.
        model_input_names: The inputs the model takes, used where the config names none.

    Example:
        >>> tok = FastTokenizer.from_folder("path/to/model")  # doctest: +SKIP
        >>> tok(["a query"], ["a passage"], truncation="only_second", max_length=128)
        ... # doctest: +SKIP
    """

    is_fast = True

    def __init__(
        self,
        tokenizer: Any,
        config: Mapping[str, Any],
        model_input_names: Sequence[str] = ("input_ids", "token_type_ids", "attention_mask"),
    ) -> None:
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._truncation: tuple[Any, ...] | None = None
        limit = config.get("model_max_length")
        self.model_max_length = int(limit) if isinstance(limit, int | float) else _NO_LIMIT
        self.padding_side = str(config.get("padding_side") or "right")
        self.truncation_side = str(config.get("truncation_side") or "right")
        names = config.get("model_input_names")
        self.model_input_names = list(names) if names else list(model_input_names)
        named = {key: _content(config.get(key)) for key in _SPECIAL_KEYS}
        extra = config.get("additional_special_tokens") or config.get("extra_special_tokens") or []
        contents = {c for c in named.values() if c} | {c for c in (_content(t) for t in extra) if c}
        ids = {tokenizer.token_to_id(c) for c in contents}
        self.all_special_ids = sorted(i for i in ids if i is not None)
        self.pad_token_id = self._id_of(named["pad_token"])
        self.unk_token_id = self._id_of(named["unk_token"])

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self._tokenizer.token_to_id(token)

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        model_input_names: Sequence[str] = ("input_ids", "token_type_ids", "attention_mask"),
    ) -> FastTokenizer:
        """Load ``tokenizer.json`` (and its configs) from a model folder.

        Raises:
            FileNotFoundError: the folder has no ``tokenizer.json`` (a slow-only tokenizer).
        """
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no tokenizer.json")
        config: dict[str, Any] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            extra = folder / name
            if extra.is_file():
                config.update(json.loads(extra.read_text(encoding="utf-8")))
        return cls(Tokenizer.from_file(str(path)), config, model_input_names)

    def get_vocab(self) -> dict[str, int]:
        """Token -> id, added tokens included."""
        return dict(self._tokenizer.get_vocab(with_added_tokens=True))

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        add_special_tokens: bool = True,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        padding: bool | str = False,
        return_overflowing_tokens: bool = False,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_offsets_mapping: bool = False,
    ) -> dict[str, Any]:
        """Encode texts or text pairs as transformers' fast tokenizer does (no padding).

        Returns:
            ``input_ids`` (and ``token_type_ids``, ``attention_mask``, ``offset_mapping``,
            ``overflow_to_sample_mapping`` as asked), one list per encoded row; lists of ints
            for a single text.

        Raises:
            ValueError: padding was asked for (the encoding layer pads its own batches).
            Exception: what ``tokenizers`` raises when the truncation cannot be met (a first
                sequence longer than ``max_length`` with ``truncation="only_second"``).
        """
        if padding not in (False, None, "do_not_pad"):
            raise ValueError("FastTokenizer does not pad; pad the batch yourself")
        single = isinstance(text, str)
        texts = [text] if isinstance(text, str) else list(text)
        inputs: list[Any] = texts
        if text_pair is not None:
            pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            if len(pairs) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(pairs)} text pairs")
            inputs = list(zip(texts, pairs, strict=True))
        strategy: str | None
        if truncation is True or truncation == "longest_first":
            strategy = "longest_first"
        elif truncation in (False, None, "do_not_truncate"):
            strategy = None
        elif truncation in ("only_first", "only_second"):
            strategy = str(truncation)
        else:
            raise ValueError(f"unknown truncation {truncation!r}")
        if strategy is not None and max_length is None:
            max_length = self.model_max_length
        with self._lock:
            wanted = None if strategy is None else (max_length, stride, strategy)
            if wanted != self._truncation:
                if wanted is None:
                    self._tokenizer.no_truncation()
                else:
                    self._tokenizer.enable_truncation(
                        max_length, stride=stride, strategy=strategy, direction=self.truncation_side
                    )
                self._truncation = wanted
            encodings = self._tokenizer.encode_batch(inputs, add_special_tokens=add_special_tokens)
        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        rows: list[Any] = []
        owner: list[int] = []
        for i, enc in enumerate(encodings):
            parts = [enc, *enc.overflowing] if return_overflowing_tokens else [enc]
            rows.extend(parts)
            owner.extend([i] * len(parts))
        out: dict[str, Any] = {"input_ids": [r.ids for r in rows]}
        if return_token_type_ids:
            out["token_type_ids"] = [r.type_ids for r in rows]
        if return_attention_mask:
            out["attention_mask"] = [r.attention_mask for r in rows]
        if return_offsets_mapping:
            out["offset_mapping"] = [r.offsets for r in rows]
        if return_overflowing_tokens:
            out["overflow_to_sample_mapping"] = owner
        if single and not return_overflowing_tokens:
            return {k: v[0] for k, v in out.items()}
        return out
