"""LLM-class rerankers: causal language models that answer "yes" or "no" to a prompt.

Qwen3-Reranker, bge-reranker-v2-gemma and mxbai-rerank-v2 are decoder language models trained to
answer whether a document meets a query. A pair's score is read from the logits of the answer
tokens at the last position of the model's own prompt template; without that exact template the
scores are close to random, so the templates live here as data (:data:`TEMPLATES`), one frozen
:class:`PromptTemplate` per family, and :class:`CausalLMReranker` applies them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rerank_core.base import Batch, Pair, Reranker, _batch_of
from rerank_core.encoding import pack_by_tokens
from rerank_core.validation import check_non_negative_int, check_positive_int, check_text

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "TEMPLATES",
    "CausalLMReranker",
    "PromptTemplate",
    "detect_family",
]

_SLOT = re.compile(r"\{(query|document|instruction)\}")


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """How one family of causal-LM rerankers wants a ``(query, document)`` pair written.

    The model input is, in order: the BOS token (when ``bos``), each ``prefix`` piece, the
    ``query`` piece, each ``separator`` piece, the ``document`` piece and each ``suffix`` piece.
    Every piece is tokenized on its own, without special tokens, and the token lists are
    concatenated, as the families' reference code does. ``{query}``, ``{document}`` and
    ``{instruction}`` mark where the texts go (substituted once, so braces inside a query or a
    document are kept as they are).

    Only the document is ever truncated: the ``document`` piece must end with ``{document}``, so
    cutting its tokens from the right removes document tokens while its lead-in (``"<Document>: "``)
    and everything around it survive. A query longer than ``query_share`` of the room left by the
    template is cut to that share.

    Attributes:
        name: Template name, part of the scorer's identity.
        query: The query piece; holds ``{query}`` and may hold ``{instruction}``.
        document: The document piece; ends with ``{document}``.
        prefix: Pieces before the query (a system prompt).
        separator: Pieces between the query and the document pieces.
        suffix: Pieces after the document (the question to the model, the assistant turn).
        yes: The answer word whose logit means "relevant"; it must be one token.
        no: The answer word meaning "not relevant"; ``None`` scores the ``yes`` logit alone.
        instruction_format: How an instruction fills ``{instruction}`` (``"{instruction}"`` puts
            it as is); ``None`` when the template takes no instruction.
        default_instruction: The instruction used when none is given (``None``: no instruction).
        bos: Start the input with the tokenizer's BOS token.
        query_share: Most of the room (``max_length`` less the template) the query may take.
        default_max_length: Token window used when neither the caller nor the model sets a
            smaller one.
    """

    name: str
    query: str
    document: str
    prefix: tuple[str, ...] = ()
    separator: tuple[str, ...] = ()
    suffix: tuple[str, ...] = ()
    yes: str = "yes"
    no: str | None = "no"
    instruction_format: str | None = "{instruction}"
    default_instruction: str | None = None
    bos: bool = False
    query_share: float = 0.75
    default_max_length: int = 8192

    def __post_init__(self) -> None:
        def slots(text: str) -> list[str]:
            return _SLOT.findall(text)

        if slots(self.query).count("query") != 1:
            raise ValueError(f"template {self.name!r}: query must hold '{{query}}' exactly once")
        if "document" in slots(self.query):
            raise ValueError(f"template {self.name!r}: '{{document}}' belongs in document")
        doc_slots = slots(self.document)
        if doc_slots != ["document"] or not self.document.endswith("{document}"):
            raise ValueError(
                f"template {self.name!r}: document must end with '{{document}}' and hold no other "
                "slot, so that truncation only ever cuts the document"
            )
        for piece in (*self.prefix, *self.separator, *self.suffix):
            if {"query", "document"} & set(slots(piece)):
                raise ValueError(
                    f"template {self.name!r}: '{{query}}' and '{{document}}' go in the query and "
                    f"document pieces, not in {piece!r}"
                )
        uses_instruction = any(
            "instruction" in slots(p)
            for p in (self.query, *self.prefix, *self.separator, *self.suffix)
        )
        if self.instruction_format is None:
            if uses_instruction or self.default_instruction is not None:
                raise ValueError(
                    f"template {self.name!r} takes no instruction (instruction_format=None) but "
                    "has an '{instruction}' slot or a default instruction"
                )
        elif not uses_instruction:
            raise ValueError(
                f"template {self.name!r}: instruction_format is set but no piece has an "
                "'{instruction}' slot; set instruction_format=None for a template without one"
            )
        elif "{instruction}" not in self.instruction_format:
            raise ValueError(f"template {self.name!r}: instruction_format needs '{{instruction}}'")
        if not self.yes or self.no == "":
            raise ValueError(f"template {self.name!r}: yes (and no, when set) must be words")
        if not 0.0 < self.query_share < 1.0:
            raise ValueError(f"template {self.name!r}: query_share must be in (0, 1)")
        check_positive_int("default_max_length", self.default_max_length, allow_none=False)

    @property
    def takes_instruction(self) -> bool:
        """Whether an instruction can be given to this template."""
        return self.instruction_format is not None

    def instruction_text(self, instruction: str | None) -> str:
        """What fills ``{instruction}``: the formatted instruction, or ``""`` for none."""
        if not instruction or self.instruction_format is None:
            return ""
        return _fill(self.instruction_format, instruction=instruction)

    def render(self, query: str, document: str, instruction: str | None = None) -> str:
        """The whole prompt as one string (for reading; scoring tokenizes piece by piece)."""
        values = {
            "query": query,
            "document": document,
            "instruction": self.instruction_text(instruction),
        }
        pieces = (*self.prefix, self.query, *self.separator, self.document, *self.suffix)
        return "".join(_fill(p, **values) for p in pieces)


def _fill(piece: str, **values: str) -> str:
    return _SLOT.sub(lambda m: values.get(m.group(1), m.group(0)), piece)


_QWEN_CHAT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"

#: The families this module knows, by name. Each is the model card's reference prompt.
TEMPLATES: dict[str, PromptTemplate] = {
    # Qwen/Qwen3-Reranker-0.6B, -4B, -8B: Qwen3ForCausalLM, "yes" against "no".
    "qwen3-reranker": PromptTemplate(
        name="qwen3-reranker",
        prefix=(
            "<|im_start|>system\nJudge whether the Document meets the requirements based on the "
            'Query and the Instruct provided. Note that the answer can only be "yes" or "no".'
            "<|im_end|>\n<|im_start|>user\n",
        ),
        query="<Instruct>: {instruction}\n<Query>: {query}\n",
        document="<Document>: {document}",
        suffix=(_QWEN_CHAT_SUFFIX + "<think>\n\n</think>\n\n",),
        yes="yes",
        no="no",
        default_instruction=(
            "Given a web search query, retrieve relevant passages that answer the query"
        ),
        default_max_length=8192,
    ),
    # BAAI/bge-reranker-v2-gemma: GemmaForCausalLM (gemma-2b); the "Yes" logit alone, whose
    # sigmoid is the normalised score (FlagEmbedding's FlagLLMReranker). The card's ``prompt``
    # argument is the instruction here.
    "bge-reranker-gemma": PromptTemplate(
        name="bge-reranker-gemma",
        bos=True,
        query="A: {query}",
        separator=("\n",),
        document="B: {document}",
        suffix=("\n", "{instruction}"),
        yes="Yes",
        no=None,
        default_instruction=(
            "Given a query A and a passage B, determine whether the passage contains an answer "
            "to the query by providing a prediction of either 'Yes' or 'No'."
        ),
        default_max_length=1024,
    ),
    # mixedbread-ai/mxbai-rerank-base-v2 / -large-v2: Qwen2ForCausalLM (Qwen2.5), "1" against "0";
    # no instruction unless one is given.
    "mxbai-rerank-v2": PromptTemplate(
        name="mxbai-rerank-v2",
        prefix=(
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
            "assistant.<|im_end|>\n<|im_start|>user\n",
        ),
        query="{instruction}query: {query}",
        separator=("\n",),
        document="document: {document}",
        suffix=(
            "\n",
            "You are a search relevance expert who evaluates how well documents match search "
            "queries. For each query-document pair, carefully analyze the semantic relationship "
            "between them, then provide your binary relevance judgment (0 for not relevant, 1 for "
            "relevant).\nRelevance:",
            _QWEN_CHAT_SUFFIX,
        ),
        yes="1",
        no="0",
        instruction_format="instruction: {instruction}\n",
        default_instruction=None,
        default_max_length=8192,
    ),
}

# Names that identify a family (hub ids, local folders, hub-cache folders, *-seq-cls exports).
_NAME_PATTERNS = (
    (re.compile(r"qwen3[-_ ]?reranker", re.IGNORECASE), "qwen3-reranker"),
    (re.compile(r"bge[-_]reranker[-_]v2[-_]gemma(?![-_]?2)", re.IGNORECASE), "bge-reranker-gemma"),
    (
        re.compile(r"mxbai[-_]rerank[-_](?:xsmall|base|large)[-_]v2", re.IGNORECASE),
        "mxbai-rerank-v2",
    ),
)
# Architecture -> the one listed reranker family built on it (a guess, logged as such).
_MODEL_TYPES = {
    "qwen3": "qwen3-reranker",
    "gemma": "bge-reranker-gemma",
    "gemma2": "bge-reranker-gemma",
    "qwen2": "mxbai-rerank-v2",
}


def detect_family(model_name_or_path: str | os.PathLike[str] | None) -> str | None:
    """The causal-LM reranker family a model's name identifies, or ``None``.

    Reads only the name (hub id, folder path, hub-cache folder such as
    ``models--Qwen--Qwen3-Reranker-0.6B``), so it is cheap enough for choosing a backend.

    Example:
        >>> detect_family("Qwen/Qwen3-Reranker-0.6B")
        'qwen3-reranker'
        >>> detect_family("cross-encoder/ms-marco-MiniLM-L6-v2") is None
        True
    """
    if not model_name_or_path:
        return None
    name = os.fspath(model_name_or_path)
    for pattern, family in _NAME_PATTERNS:
        if pattern.search(name):
            return family
    return None


def _family_from_config(config: Any) -> str | None:
    for attr in ("name_or_path", "_name_or_path"):
        family = detect_family(getattr(config, attr, None) or None)
        if family:
            return family
    return _MODEL_TYPES.get(str(getattr(config, "model_type", "")))


def _default_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    import torch

    from rerank_core.cross_encoder import _resolve_dtype

    if dtype is not None and dtype != "auto":
        return _resolve_dtype(dtype, device)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


def _dtype_name(dtype: Any) -> str | None:
    return str(dtype).removeprefix("torch.") if dtype is not None else None


class CausalLMReranker(Reranker):
    r"""Score pairs with a causal-LM reranker: the "yes" probability at the end of its prompt.

    **Families and templates** (:data:`TEMPLATES`; each is the model card's reference code, and
    ``family`` is detected from the model name, else from the config's ``model_type``):

    ``qwen3-reranker`` (Qwen3-Reranker-0.6B/4B/8B, ``Qwen3ForCausalLM``)
        ``<|im_start|>system`` judge prompt, user turn ``<Instruct>: {instruction}\n<Query>:
        {query}\n<Document>: {document}``, then the assistant turn with an empty think block;
        "yes" against "no". Default instruction: "Given a web search query, retrieve relevant
        passages that answer the query". Card window: 8192.
    ``bge-reranker-gemma`` (bge-reranker-v2-gemma, ``GemmaForCausalLM`` on gemma-2b)
        ``<bos>A: {query}\nB: {document}\n{instruction}``; the instruction is the card's
        ``prompt`` ("Given a query A and a passage B, determine whether the passage contains an
        answer to the query by providing a prediction of either 'Yes' or 'No'."). The score is the
        "Yes" logit alone and its sigmoid, as FlagEmbedding's ``FlagLLMReranker`` computes it (the
        card has no "No" token). Window here: 1024 tokens in all (the card's 1024 counts the query
        and passage only).
    ``mxbai-rerank-v2`` (mxbai-rerank-base-v2 / large-v2, ``Qwen2ForCausalLM`` on Qwen2.5)
        Qwen chat system turn, ``[instruction: {instruction}\n]query: {query}\ndocument:
        {document}\n`` and its relevance-expert task prompt ending ``Relevance:``; "1" against "0".
        No instruction by default. Card window: 8192.
    Any other model: pass ``template=PromptTemplate(...)``.

    **Scores.** With ``normalize=True`` (default, ``score_scale == "probability"``) the softmax
    probability of "yes" over {"yes", "no"} at the last position, i.e. ``exp(log_softmax([no,
    yes])[1])`` as the cards compute it, equal to ``sigmoid(yes - no)``; for yes-only templates
    ``sigmoid(yes)``. With ``normalize=False`` (``"logit"``) the logit difference ``yes - no``
    (or the ``yes`` logit), whose sigmoid is that probability.

    **Instructions.** ``instruction=`` replaces the family's default; :meth:`with_instruction`
    returns a copy with another one (sharing the loaded model), for per-task or per-call use.
    A template without an instruction slot refuses one with a ``ValueError``.

    **Truncation and chunking.** ``max_length`` is the whole model input, template included. The
    prefix, the query, the separator, the document's lead-in and the suffix always survive; only
    the document is cut from the right (a query is cut only past ``query_share``, 3/4, of the room
    left by the template). With ``chunking=True`` a document longer than its room is split into
    token windows overlapping by ``chunk_overlap`` (at most half a window), each window is scored
    inside the full template and the pair keeps its best window score (``max_chunks`` caps the
    windows per document, the first ones).

    **Sequence-classification exports.** A ``*ForSequenceClassification`` folder made from one of
    these models (the ``*-seq-cls`` exports fold the answer rows into one logit, ``W_yes - W_no``;
    two-label exports keep ``[W_no, W_yes]``) loads here too: the template is applied the same way
    and the head's logit read at the last position, which gives the causal-LM scores of the same
    weights. :class:`~rerank_core.CrossEncoderScorer` would feed such a model bare pairs without
    the template, which scores wrong.

    **Batching and precision.** Each call tokenizes its pairs, sorts the model inputs by length
    and packs batches under ``batch_size`` rows and ``max_batch_tokens`` padded tokens; inputs are
    padded on the left with position ids counted from each input's first real token, so the last
    position is every input's answer position and a score does not depend on its batch. Weights
    load in bf16 on CUDA (fp16 where bf16 is missing), fp16 on MPS and fp32 on CPU;
    ``autocast="bfloat16"`` runs the CPU matrix products in bf16 (fast on AMX / AVX512-BF16).
    One instance may be shared across threads; a lock serialises the forward pass.

    **How this was verified.** Real weights could not be downloaded where this was written. The
    tests build tiny random models of the real architectures (``Qwen3ForCausalLM``,
    ``GemmaForCausalLM`` and ``Gemma2ForCausalLM``, ``Qwen2ForCausalLM``) with tokenizers that hold
    each family's special tokens and answer words (Qwen's pre-tokenizer pattern for the Qwen
    families), and check the scores against the model cards' reference code written out
    independently in the test (prompt built by hand, tokenized, the model run, the log-softmax /
    logit taken at the last position) within 1e-5: single pairs, batches of mixed lengths,
    truncated and chunked documents, and seq-cls conversions of the same weights.

    **CPU cost.** Per token, Qwen3-Reranker-0.6B does about 40 times the matrix work of the
    bundled MiniLM-L6 cross-encoder (about 440M against 11M multiply-adds outside the embeddings),
    and the template adds its tokens to every pair. Measured with ``scripts/bench_causal_lm.py``
    (random weights of Qwen3-0.6B's shape, 200-token pairs, 2 AVX-512 cores shared with other
    jobs, load average 25-35): fp32 0.038 pairs/s (26 s a pair, peak RSS 2.7 GiB), bf16 autocast
    0.062 pairs/s (peak RSS 2.9 GiB), against 1.7 pairs/s for the bundled MiniLM on the same
    pairs and machine. On a CPU, rerank a short window (``rerank_window`` of 10-20) or only the
    top few candidates of a fast first reranker; use a GPU for anything more.

    Args:
        model_name_or_path: Hugging Face id or local folder of a causal-LM reranker (or of its
            sequence-classification export).
        family: A name in :data:`TEMPLATES`; ``None`` detects it from the name or the config.
        template: A :class:`PromptTemplate` for a model whose family is not listed (overrides
            ``family``).
        instruction: Task instruction; ``None`` uses the template's default.
        max_length: Tokens per model input, template included; ``None`` uses the template's
            default capped by the model's position limit.
        batch_size: Most model inputs (pairs, or windows with chunking) per forward pass.
        max_batch_tokens: Most padded tokens per forward pass; ``None`` caps by ``batch_size``.
        normalize: Probabilities (``True``) or logits (``False``).
        device: ``"cuda"``, ``"mps"``, ``"cpu"``, ...; ``None`` picks the best available.
        dtype: Weight dtype (``"float32"``, ``"bfloat16"``, ``"float16"``, a ``torch.dtype``);
            ``None`` as above.
        autocast: ``"bfloat16"`` or ``"float16"`` to run under ``torch.autocast``; ``None`` not.
        chunking: Score long documents by their best window instead of truncating them.
        chunk_overlap: Tokens shared by consecutive windows (capped at half a window).
        max_chunks: Most windows scored per document; ``None`` scores all.
        rerank_window: See :class:`~rerank_core.Reranker`.
        should_rerank: See :class:`~rerank_core.Reranker`.
        local_files_only: Never contact the hub (defaults to ``HF_HUB_OFFLINE``).
        revision: Hub revision to load.
        cache_dir: Hugging Face cache folder to read (defaults to the standard one).
        num_threads: Set torch's intra-op threads (process-wide); ``None`` keeps torch's.
        trust_remote_code: Passed to transformers.
        model_kwargs: Extra keyword arguments for the model's ``from_pretrained``.
        tokenizer_kwargs: Extra keyword arguments for ``AutoTokenizer.from_pretrained``.

    Example:
        >>> scorer = CausalLMReranker("Qwen/Qwen3-Reranker-0.6B")  # doctest: +SKIP
        >>> legal = scorer.with_instruction("Find the statute that answers the question")
        >>> legal.rerank("can a landlord keep the deposit?", docs, top_n=3)  # doctest: +SKIP
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike[str],
        *,
        family: str | None = None,
        template: PromptTemplate | None = None,
        instruction: str | None = None,
        max_length: int | None = None,
        batch_size: int = 16,
        max_batch_tokens: int | None = 16384,
        normalize: bool = True,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        autocast: str | torch.dtype | None = None,
        chunking: bool = False,
        chunk_overlap: int = 32,
        max_chunks: int | None = None,
        num_threads: int | None = None,
        rerank_window: int | None = None,
        should_rerank: Callable[[str], bool] | None = None,
        local_files_only: bool | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size, rerank_window=rerank_window, should_rerank=should_rerank
        )
        if not model_name_or_path:
            raise ValueError(
                "CausalLMReranker needs a model: a hub id such as 'Qwen/Qwen3-Reranker-0.6B' or "
                "a local folder (there is no bundled LLM reranker)"
            )
        self.max_batch_tokens = check_positive_int("max_batch_tokens", max_batch_tokens)
        self.chunk_overlap = check_non_negative_int(
            "chunk_overlap", chunk_overlap, allow_none=False
        )
        self.max_chunks = check_positive_int("max_chunks", max_chunks)
        check_positive_int("max_length", max_length)
        if template is not None and not isinstance(template, PromptTemplate):
            raise TypeError(f"template must be a PromptTemplate, got {type(template).__name__}")
        if family is not None and family not in TEMPLATES:
            raise ValueError(f"unknown family {family!r}; choose one of {sorted(TEMPLATES)}")
        self.chunking = bool(chunking)
        self.normalize = bool(normalize)

        import torch
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        from rerank_core.cross_encoder import _resolve_autocast, pick_device

        threads = check_positive_int("num_threads", num_threads)
        if threads is not None:
            torch.set_num_threads(threads)
        source = os.fspath(model_name_or_path)
        if local_files_only is None:
            local_files_only = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}
        hub: dict[str, Any] = {
            "local_files_only": local_files_only,
            "revision": revision,
            "trust_remote_code": trust_remote_code,
        }
        if cache_dir is not None:
            hub["cache_dir"] = os.fspath(cache_dir)
        config = AutoConfig.from_pretrained(source, **hub)

        if template is None:
            family = family or detect_family(source)
            if family is None:
                family = _family_from_config(config)
                if family is None:
                    raise ValueError(
                        f"cannot tell which reranker family {source} is (model_type "
                        f"{getattr(config, 'model_type', None)!r}); pass family= (one of "
                        f"{sorted(TEMPLATES)}) or template=PromptTemplate(...)"
                    )
                logger.warning(
                    "%s: family %r guessed from model_type %r; pass family= to be explicit",
                    source,
                    family,
                    config.model_type,
                )
            template = TEMPLATES[family]
        self.template = template
        self.family = family if family is not None else "custom"
        self.model_name = source
        self.device = pick_device(device)
        self.dtype = _default_dtype(dtype, self.device)
        self.autocast = _resolve_autocast(autocast, self.device)

        tokenizer = AutoTokenizer.from_pretrained(source, **hub, **(tokenizer_kwargs or {}))
        architectures = list(getattr(config, "architectures", None) or [])
        self.head = (
            "seq-cls"
            if any(a.endswith("ForSequenceClassification") for a in architectures)
            else "causal-lm"
        )
        loader = (
            AutoModelForSequenceClassification if self.head == "seq-cls" else AutoModelForCausalLM
        )
        model = loader.from_pretrained(source, dtype=self.dtype, **hub, **(model_kwargs or {}))
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()
        self._lock = threading.Lock()
        self._torch = torch

        self._yes_id = self._answer_id(template.yes)
        self._no_id = self._answer_id(template.no) if template.no is not None else None
        if self.head == "seq-cls":
            self._check_seq_cls_head()
        pad = tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))
        self._bos = [int(tokenizer.bos_token_id)] if template.bos else []
        if template.bos and tokenizer.bos_token_id is None:
            raise ValueError(f"template {template.name!r} starts with BOS but {source} has none")
        limit = getattr(config, "max_position_embeddings", None)
        default = min(
            template.default_max_length, int(limit) if limit else template.default_max_length
        )
        self.max_length = max_length or default
        self._pad_multiple = 8 if self.device.startswith("cuda") else None
        self._set_instruction(instruction)
        logger.info(
            "loaded %s reranker %s (%s head) on %s (%s%s, max_length=%d)",
            self.family,
            source,
            self.head,
            self.device,
            _dtype_name(self.dtype),
            f", autocast {_dtype_name(self.autocast)}" if self.autocast else "",
            self.max_length,
        )

    # ----------------------------------------------------------------- setup

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        # A fast tokenizer sets its truncation/padding state per call: one caller at a time.
        with self._tokenizer_lock:
            enc = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)
        return [list(ids) for ids in enc["input_ids"]]

    def _answer_id(self, word: str) -> int:
        ids = self._encode([word])[0]
        if len(ids) != 1:
            raise ValueError(
                f"{self.model_name}: the answer word {word!r} of template "
                f"{self.template.name!r} is {len(ids)} tokens for this tokenizer, not one; "
                "this is not a model of that family (pass family= or template=)"
            )
        return ids[0]

    def _check_seq_cls_head(self) -> None:
        head = getattr(self.model, "score", None)
        labels = int(getattr(self.model.config, "num_labels", 0))
        if head is None or not hasattr(head, "weight"):
            raise ValueError(
                f"{self.model_name}: a sequence-classification export needs the decoder "
                "classification head `score` of transformers' *ForSequenceClassification"
            )
        allowed = (1,) if self.template.no is None else (1, 2)
        if labels not in allowed:
            raise ValueError(
                f"{self.model_name} has {labels} labels; a {self.template.name} export needs one "
                "logit (yes - no folded into one row)"
                + ("" if self.template.no is None else " or two ([no, yes])")
            )
        self._labels = labels

    def _set_instruction(self, instruction: str | None) -> None:
        t = self.template
        if instruction is not None:
            check_text("instruction", instruction)
            if not t.takes_instruction:
                raise ValueError(
                    f"the {t.name!r} template takes no instruction; drop instruction= or use a "
                    "template with an '{instruction}' slot"
                )
        self.instruction = instruction if instruction is not None else t.default_instruction
        text = t.instruction_text(self.instruction)
        fixed = [*t.prefix, *t.separator, *t.suffix]
        encoded = self._encode([_fill(p, instruction=text) for p in fixed])
        n_pre, n_sep = len(t.prefix), len(t.separator)
        self._prefix_ids = self._bos + [i for ids in encoded[:n_pre] for i in ids]
        self._sep_ids = [i for ids in encoded[n_pre : n_pre + n_sep] for i in ids]
        self._suffix_ids = [i for ids in encoded[n_pre + n_sep :] for i in ids]
        self._instruction_text = text
        lead = t.document[: -len("{document}")].rstrip()
        self._lead_ids = self._encode([lead])[0] if lead else []
        fixed_len = len(self._prefix_ids) + len(self._sep_ids) + len(self._suffix_ids)
        self._room = self.max_length - fixed_len
        self._query_cap = int(self._room * t.query_share)
        if self._room - self._query_cap < len(self._lead_ids) + 1:
            raise ValueError(
                f"max_length={self.max_length} leaves no room for a document: the "
                f"{t.name} template takes {fixed_len} tokens; raise max_length"
            )

    def with_instruction(self, instruction: str | None) -> CausalLMReranker:
        """A copy that uses ``instruction`` (``None``: the template's default).

        The copy shares the loaded model, tokenizer and locks, so it costs no memory; its
        :meth:`identity` differs, so caches keep the two apart.

        Raises:
            ValueError: the template takes no instruction.
        """
        clone = copy.copy(self)
        clone._set_instruction(instruction)
        return clone

    # ----------------------------------------------------------------- preparation

    def _encode_pairs(self, pairs: Sequence[Pair]) -> list[list[list[int]]]:
        """Model inputs per pair: one, or one per window when chunking splits the document."""
        t = self.template
        queries = sorted({q for q, _ in pairs})
        q_encoded = self._encode(
            [_fill(t.query, query=q, instruction=self._instruction_text) for q in queries]
        )
        q_ids = {q: ids[: self._query_cap] for q, ids in zip(queries, q_encoded, strict=True)}
        d_encoded = self._encode([_fill(t.document, document=d) for _, d in pairs])
        out: list[list[list[int]]] = []
        for (query, _), doc_ids in zip(pairs, d_encoded, strict=True):
            head = self._prefix_ids + q_ids[query] + self._sep_ids
            out.append(
                [head + w + self._suffix_ids for w in self._windows(doc_ids, len(q_ids[query]))]
            )
        return out

    def _windows(self, doc_ids: list[int], query_len: int) -> list[list[int]]:
        room = self._room - query_len
        if len(doc_ids) <= room:
            return [doc_ids]
        n_lead = len(self._lead_ids)
        if doc_ids[:n_lead] != self._lead_ids:
            n_lead = 0  # the lead-in merged with the document's first token: keep it whole
        if not self.chunking:
            return [doc_ids[:room]]
        lead, body = doc_ids[:n_lead], doc_ids[n_lead:]
        width = room - n_lead
        overlap = min(self.chunk_overlap, width // 2)
        stride = width - overlap
        starts = [0]
        while starts[-1] + width < len(body):
            starts.append(starts[-1] + stride)
        if self.max_chunks is not None:
            starts = starts[: self.max_chunks]
        return [lead + body[s : s + width] for s in starts]

    def count_tokens(self, pairs: Sequence[Pair]) -> list[int]:
        """Tokens the model reads for each pair (all windows when chunking), template included.

        Raises:
            TypeError: ``pairs`` is not a sequence of ``(query, document)`` string pairs.
            ValueError: a query is empty.
        """
        checked = self._check_pairs(pairs)
        return [sum(len(row) for row in rows) for rows in self._encode_pairs(checked)]

    # ----------------------------------------------------------------- scoring

    _prepare_blocks = True

    def _prepare(self, pairs: Sequence[Pair]) -> list[Batch]:
        """Encode each pair inside the template once; batches of pairs by token length."""
        encoded = self._encode_pairs(pairs)
        widths = [max(len(row) for row in rows) for rows in encoded]
        batches: list[Batch] = []
        for rows in self._plan_rows(widths, [len(rows) for rows in encoded]):
            batches.append(_batch_of(pairs, rows, tuple(encoded[i] for i in rows)))
        return batches

    def _score_pairs(self, pairs: Sequence[Pair]) -> list[float]:
        return self._score_batch(_batch_of(pairs, range(len(pairs)), self._encode_pairs(pairs)))

    def _score_batch(self, batch: Batch) -> list[float]:
        """Score every window of the batch's pairs; each pair keeps its best window."""
        prepared: Sequence[list[list[int]]] = batch.payload
        rows = [row for rows in prepared for row in rows]
        owner = np.asarray([i for i, rows_i in enumerate(prepared) for _ in rows_i])
        raw = np.empty(len(rows), dtype=np.float64)
        for part in self._plan_rows([len(r) for r in rows]):
            raw[part] = self._forward([rows[i] for i in part])
        best = np.full(len(prepared), -np.inf)
        np.maximum.at(best, owner, raw)
        scores = 0.5 * (1.0 + np.tanh(0.5 * best)) if self.normalize else best
        return [float(s) for s in scores]

    def _plan_rows(self, lengths: list[int], counts: list[int] | None = None) -> list[list[int]]:
        """Longest first under ``batch_size`` rows and ``max_batch_tokens`` padded tokens."""
        rows = [1] * len(lengths) if counts is None else counts
        return pack_by_tokens(lengths, rows, self.batch_size, self.max_batch_tokens)

    def _forward(self, rows: list[list[int]]) -> np.ndarray:
        """Raw scores (``yes - no`` logit, or ``yes``) of one left-padded batch."""
        torch = self._torch
        width = max(len(r) for r in rows)
        if self._pad_multiple:
            width = -(-width // self._pad_multiple) * self._pad_multiple
        ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for r, row in enumerate(rows):
            ids[r, width - len(row) :] = row
            mask[r, width - len(row) :] = 1
        positions = np.maximum(mask.cumsum(axis=1) - 1, 0)
        inputs = {
            "input_ids": torch.from_numpy(ids).to(self.device),
            "attention_mask": torch.from_numpy(mask).to(self.device),
            "position_ids": torch.from_numpy(positions).to(self.device),
        }
        with self._lock, torch.inference_mode():
            if self.autocast is not None:
                with torch.autocast(device_type=self.device.split(":")[0], dtype=self.autocast):
                    logits = self._last_logits(inputs)
            else:
                logits = self._last_logits(inputs)
        return logits.numpy()

    def _last_logits(self, inputs: dict[str, Any]) -> Any:
        if self.head == "seq-cls":
            base = getattr(self.model, self.model.base_model_prefix)
            hidden = base(**inputs, use_cache=False).last_hidden_state[:, -1]
            out = self.model.score(hidden).float()
            raw = out[:, 0] if self._labels == 1 else out[:, 1] - out[:, 0]
        else:
            last = self.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1].float()
            raw = last[:, self._yes_id]
            if self._no_id is not None:
                raw = raw - last[:, self._no_id]
        return raw.double().cpu()

    # ----------------------------------------------------------------- identity

    @property
    def score_scale(self) -> str:
        """``"probability"`` with ``normalize=True``, else ``"logit"``."""
        return "probability" if self.normalize else "logit"

    def identity(self) -> dict[str, Any]:
        """Adds the template, instruction, window, head, answer tokens and precision."""
        digest = hashlib.sha256(
            json.dumps(asdict(self.template), sort_keys=True).encode("utf-8")
        ).hexdigest()[:16]
        return {
            **super().identity(),
            "backend": "causal-lm",
            "family": self.family,
            "template": self.template.name,
            "template_sha": digest,
            "instruction": self.instruction,
            "head": self.head,
            "answer_ids": [self._yes_id, self._no_id],
            "max_length": self.max_length,
            "chunking": self.chunking,
            "chunk_overlap": self.chunk_overlap if self.chunking else None,
            "max_chunks": self.max_chunks if self.chunking else None,
            "device_type": self.device.split(":")[0],
            "dtype": _dtype_name(self.dtype),
            "autocast": _dtype_name(self.autocast),
        }

    def describe(self) -> dict[str, Any]:
        """A JSON-safe description: model, family, instruction, window, device and precision."""
        return {
            **super().describe(),
            "family": self.family,
            "instruction": self.instruction,
            "head": self.head,
            "max_length": self.max_length,
            "chunking": self.chunking,
            "device": self.device,
            "dtype": _dtype_name(self.dtype),
            "autocast": _dtype_name(self.autocast),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model_name={self.model_name!r}, family={self.family!r}, "
            f"max_length={self.max_length})"
        )
