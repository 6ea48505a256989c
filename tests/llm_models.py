"""Tiny causal-LM rerankers of the real architectures, built at test time (no downloads).

Each builder trains a small byte-level / metaspace BPE tokenizer on the family's own prompt texts
plus a word list, with the family's special tokens, wraps it in ``PreTrainedTokenizerFast`` and
saves it beside a randomly initialised model of the family's architecture:

* Qwen3-Reranker: ``Qwen3ForCausalLM``, Qwen2's pre-tokenizer split pattern and byte-level BPE,
  ``<|im_start|>``/``<|im_end|>``/``<|endoftext|>`` and ``<think>``/``</think>``.
* bge-reranker-v2-gemma: ``GemmaForCausalLM`` (its real architecture, gemma-2b based) or
  ``Gemma2ForCausalLM``; ``<pad>``/``<eos>``/``<bos>``/``<unk>`` at ids 0-3 as in Gemma's vocab,
  metaspace BPE.
* mxbai-rerank-v2: ``Qwen2ForCausalLM`` (its real architecture, Qwen2.5 based), Qwen2 tokenizer.

The yes/no answer rows of the output embedding are scaled up so that scores spread over (0, 1)
instead of sitting at 0.5, which makes a wrong template or a wrong position visible in the
scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Qwen2 / Qwen2.5 / Qwen3's pre-tokenizer split pattern (from their tokenizer.json).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

WORDS = (
    "what is artificial intelligence machine learning the a an of and to in for on with by "
    "apples are fruit rich vitamins weather fine today walk diabetes treated diet exercise "
    "panda bear species endemic China giant Harper Lee novel Mockingbird wrote who when where "
    "how why computer science builds intelligent machines data predictions film review slow "
    "beautiful city river mountain history ancient modern energy solar wind water policy "
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda omicron sigma omega "
    "yes no Yes No 1 0 query document passage instruction relevance answer"
).split()

QWEN3_SYSTEM = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"

GEMMA_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the "
    "query by providing a prediction of either 'Yes' or 'No'."
)

MXBAI_SYSTEM = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\n<|im_start|>user\n"
)
MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
MXBAI_TASK = (
    "You are a search relevance expert who evaluates how well documents match search queries. "
    "For each query-document pair, carefully analyze the semantic relationship between them, "
    "then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\n"
    "Relevance:"
)


def _corpus(*texts: str) -> list[str]:
    lines = [" ".join(WORDS), *texts, "yes", "no", "Yes", "No", "1", "0"]
    lines += [f"{w}\n{w}: {w}? {w}." for w in WORDS]
    lines += ["<Instruct>: x\n<Query>: y\n<Document>: z", "A: x\nB: y", "query: x\ndocument: y"]
    return lines * 3


def _qwen_tokenizer(texts: list[str]) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(*texts), trainer=trainer)
    # Qwen3's think tags are added (non-special) tokens of the real vocabulary.
    tok.add_tokens(["<think>", "</think>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=32768,
    )


def _gemma_tokenizer(texts: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(*texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=8192,
    )


def _spread_answers(model: Any, token_ids: list[int], scale: float) -> None:
    import torch

    with torch.no_grad():
        head = model.get_output_embeddings().weight
        for i in token_ids:
            head[i].mul_(scale)


def _save(model: Any, tokenizer: Any, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))
    return dest


def build_qwen3_reranker(
    dest: Path, *, seed: int = 0, answer_scale: float = 5.0, **config: Any
) -> Path:
    """A tiny ``Qwen3ForCausalLM`` reranker folder with a Qwen-style tokenizer."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = _qwen_tokenizer([QWEN3_SYSTEM, QWEN3_SUFFIX, QWEN3_INSTRUCTION])
    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        "initializer_range": 0.1,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **config,
    }
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(**settings)).eval()
    answers = [tokenizer.convert_tokens_to_ids(t) for t in ("yes", "no")]
    _spread_answers(model, answers, answer_scale)
    return _save(model, tokenizer, dest)


def build_bge_gemma_reranker(
    dest: Path, *, gemma2: bool = False, seed: int = 0, answer_scale: float = 5.0, **config: Any
) -> Path:
    """A tiny ``GemmaForCausalLM`` (or ``Gemma2ForCausalLM``) reranker folder."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, GemmaConfig, GemmaForCausalLM

    tokenizer = _gemma_tokenizer([GEMMA_PROMPT])
    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 8,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        "initializer_range": 0.1,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **config,
    }
    torch.manual_seed(seed)
    if gemma2:
        settings.setdefault("sliding_window", 64)
        model: Any = Gemma2ForCausalLM(Gemma2Config(**settings)).eval()
    else:
        model = GemmaForCausalLM(GemmaConfig(**settings)).eval()
    yes = tokenizer("Yes", add_special_tokens=False)["input_ids"]
    assert len(yes) == 1, yes
    _spread_answers(model, yes, answer_scale)
    return _save(model, tokenizer, dest)


def build_mxbai_v2_reranker(
    dest: Path, *, seed: int = 0, answer_scale: float = 5.0, **config: Any
) -> Path:
    """A tiny ``Qwen2ForCausalLM`` reranker folder (mxbai-rerank-v2's architecture)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = _qwen_tokenizer([MXBAI_SYSTEM, MXBAI_SUFFIX, MXBAI_TASK])
    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        "initializer_range": 0.1,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **config,
    }
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**settings)).eval()
    answers = [tokenizer("1", add_special_tokens=False)["input_ids"][0]]
    answers.append(tokenizer("0", add_special_tokens=False)["input_ids"][0])
    _spread_answers(model, answers, answer_scale)
    return _save(model, tokenizer, dest)
