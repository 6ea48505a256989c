"""CausalLMReranker on tiny random models of the real architectures, against the model cards.

Each family's reference below is written from its model card's own code (Qwen3-Reranker's
``format_instruction`` / ``process_inputs`` / ``compute_logits``, bge-reranker-v2-gemma's
``get_inputs`` with the "Yes" logit, mxbai-rerank-v2's ``prepare_inputs`` with the "1" - "0"
logit): the prompt is built by hand, tokenized, the model run one pair at a time (no padding) and
the answer logits read at the last position. None of it calls rerank_core.
"""

from __future__ import annotations

import asyncio
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rerank_core.causal_lm import TEMPLATES, CausalLMReranker, PromptTemplate, detect_family
from tests.llm_models import (
    GEMMA_PROMPT,
    MXBAI_SUFFIX,
    MXBAI_SYSTEM,
    MXBAI_TASK,
    QWEN3_INSTRUCTION,
    QWEN3_SUFFIX,
    QWEN3_SYSTEM,
    WORDS,
    build_bge_gemma_reranker,
    build_mxbai_v2_reranker,
    build_qwen3_reranker,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-5
PAIRS = [
    ("what is artificial intelligence?", "artificial intelligence is computer science"),
    ("what is artificial intelligence?", "apples are a fruit rich in vitamins"),
    ("who wrote Mockingbird?", "Harper Lee wrote the novel in 1960. " * 6),
    ("how", "the weather is fine today, good for a walk"),
    ("why is solar energy modern?", "solar"),
    ("what is a giant panda", "giant panda bear species endemic to China"),
    ("diabetes", ""),
]


# --------------------------------------------------------------------------- the cards' code


@dataclass
class Ref:
    tokenizer: Any
    model: Any


_REFS: dict[Path, Ref] = {}


def _ref(path: Path) -> Ref:
    if path not in _REFS:
        tok = transformers.AutoTokenizer.from_pretrained(str(path))
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        _REFS[path] = Ref(tok, model.eval())
    return _REFS[path]


def prepare_for_model(tok: Any, first: list, second: list, max_length: int) -> dict:
    """The cards' ``tokenizer.prepare_for_model(..., truncation="only_second")`` call.

    transformers 5's fast tokenizers no longer have ``prepare_for_model``; where it is missing,
    do what it did with ``add_special_tokens=False``: keep ``first`` whole and cut ``second``
    from the right so the pair fits ``max_length``.
    """
    if hasattr(type(tok), "prepare_for_model"):
        return tok.prepare_for_model(
            first,
            second,
            truncation="only_second",
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            add_special_tokens=False,
        )
    return {"input_ids": first + second[: max(0, max_length - len(first))]}


def qwen3_ids(tok: Any, query: str, doc: str, instruction: str | None, max_length: int) -> list:
    """Qwen3-Reranker card: prefix + body (truncated longest_first) + suffix."""
    if instruction is None:
        instruction = QWEN3_INSTRUCTION
    body = f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
    prefix_tokens = tok.encode(QWEN3_SYSTEM, add_special_tokens=False)
    suffix_tokens = tok.encode(QWEN3_SUFFIX, add_special_tokens=False)
    inputs = tok(
        [body],
        padding=False,
        truncation="longest_first",
        return_attention_mask=False,
        max_length=max_length - len(prefix_tokens) - len(suffix_tokens),
    )
    return prefix_tokens + inputs["input_ids"][0] + suffix_tokens


def gemma_ids(tok: Any, query: str, doc: str, prompt: str | None, max_length: int) -> list:
    """bge-reranker-v2-gemma card: get_inputs()."""
    if prompt is None:
        prompt = GEMMA_PROMPT
    sep = "\n"
    prompt_inputs = tok(prompt, return_tensors=None, add_special_tokens=False)["input_ids"]
    sep_inputs = tok(sep, return_tensors=None, add_special_tokens=False)["input_ids"]
    query_inputs = tok(
        f"A: {query}",
        return_tensors=None,
        add_special_tokens=False,
        max_length=max_length * 3 // 4,
        truncation=True,
    )
    passage_inputs = tok(
        f"B: {doc}",
        return_tensors=None,
        add_special_tokens=False,
        max_length=max_length,
        truncation=True,
    )
    item = prepare_for_model(
        tok,
        [tok.bos_token_id] + query_inputs["input_ids"],
        sep_inputs + passage_inputs["input_ids"],
        max_length,
    )
    return item["input_ids"] + sep_inputs + prompt_inputs


def mxbai_ids(tok: Any, query: str, doc: str, instruction: str | None, max_length: int) -> list:
    """mxbai-rerank-v2 (MxbaiRerankV2.prepare_inputs)."""

    def get_input_ids(x: str) -> list:
        return tok(x, return_tensors=None, add_special_tokens=False)["input_ids"]

    task, sep = get_input_ids(MXBAI_TASK), get_input_ids("\n")
    prefix, suffix = get_input_ids(MXBAI_SYSTEM), get_input_ids(MXBAI_SUFFIX)
    predefined = len(prefix) + len(task) + len(suffix) + len(sep)
    query_prompt = f"query: {query}"
    if instruction:
        query_prompt = "".join([f"instruction: {instruction}", "\n", query_prompt])
    query_inputs = tok(
        query_prompt,
        return_tensors=None,
        add_special_tokens=False,
        max_length=max_length * 3 // 4,
        truncation=True,
    )
    available = tok.model_max_length - len(query_inputs["input_ids"]) - predefined
    document_inputs = tok(
        f"document: {doc}",
        return_tensors=None,
        add_special_tokens=False,
        max_length=min(available, max_length),
        truncation=True,
    )
    item = prepare_for_model(
        tok, query_inputs["input_ids"], sep + document_inputs["input_ids"], max_length
    )
    return prefix + item["input_ids"] + sep + task + suffix


def _answer_ids(family: str, tok: Any) -> tuple[int, int | None]:
    if family == "qwen3-reranker":
        return tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    if family == "bge-reranker-gemma":
        return tok("Yes", add_special_tokens=False)["input_ids"][0], None
    return tok("1", add_special_tokens=False)["input_ids"][0], tok("0")["input_ids"][0]


def card_scores(
    family: str,
    path: Path,
    pairs: list[tuple[str, str]],
    *,
    instruction: str | None = None,
    max_length: int = 100_000,
) -> tuple[list[float], list[float]]:
    """(probabilities, logits) of each pair as the family's card computes them."""
    ref = _ref(path)
    build = {"qwen3-reranker": qwen3_ids, "bge-reranker-gemma": gemma_ids}.get(family, mxbai_ids)
    yes, no = _answer_ids(family, ref.tokenizer)
    probs, logits = [], []
    for query, doc in pairs:
        ids = build(ref.tokenizer, query, doc, instruction, max_length)
        with torch.no_grad():
            last = ref.model(torch.tensor([ids])).logits[:, -1, :]
        if no is None:  # FlagLLMReranker: the "Yes" logit, sigmoid when normalised
            raw = last[:, yes]
            prob = torch.sigmoid(raw)
        else:  # log-softmax over [no, yes] at the last position
            raw = last[:, yes] - last[:, no]
            pair = torch.stack([last[:, no], last[:, yes]], dim=1)
            prob = torch.nn.functional.log_softmax(pair, dim=1)[:, 1].exp()
        probs.append(float(prob[0]))
        logits.append(float(raw[0]))
    return probs, logits


def card_length(family: str, path: Path, query: str, doc: str) -> int:
    build = {"qwen3-reranker": qwen3_ids, "bge-reranker-gemma": gemma_ids}.get(family, mxbai_ids)
    return len(build(_ref(path).tokenizer, query, doc, None, 100_000))


def card_max_length(family: str, path: Path, ours: int) -> int:
    """The card's max_length for our whole-window ``ours`` (the cards count it differently)."""
    tok = _ref(path).tokenizer

    def n(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    if family == "bge-reranker-gemma":  # the card's window holds bos + query + sep + passage
        return ours - n("\n") - n(GEMMA_PROMPT)
    if family == "mxbai-rerank-v2":  # the card's window holds query + sep + document
        return ours - n(MXBAI_SYSTEM) - n(MXBAI_TASK) - n(MXBAI_SUFFIX) - n("\n")
    return ours


# --------------------------------------------------------------------------- fixtures

FAMILIES: dict[str, Callable[[Path], Path]] = {
    "qwen3-reranker": build_qwen3_reranker,
    "bge-reranker-gemma": build_bge_gemma_reranker,
    "bge-reranker-gemma2": lambda p: build_bge_gemma_reranker(p, gemma2=True),
    "mxbai-rerank-v2": build_mxbai_v2_reranker,
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """Tiny models run fastest on one thread, and a busy CI machine does not oversubscribe."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("causal-lm")
    return {name: build(root / name) for name, build in FAMILIES.items()}


def _family(case: str) -> str:
    return "bge-reranker-gemma" if case.startswith("bge") else case


@pytest.fixture(scope="module")
def qwen3(folders: dict[str, Path]) -> CausalLMReranker:
    return CausalLMReranker(folders["qwen3-reranker"], family="qwen3-reranker", device="cpu")


_SCORERS: dict[tuple[Path, str], CausalLMReranker] = {}


def _scorer(folders: dict[str, Path], case: str, **kwargs: Any) -> CausalLMReranker:
    """One scorer per folder and settings, shared by the tests (scorers hold no call state)."""
    key = (folders[case], repr(sorted(kwargs.items())))
    if key not in _SCORERS:
        _SCORERS[key] = CausalLMReranker(
            folders[case], family=_family(case), device="cpu", **kwargs
        )
    return _SCORERS[key]


def _single_token_words(case: str, folders: dict[str, Path]) -> list[str]:
    """Words that are one token after a space, so a document can be cut by hand by words."""
    tok = _ref(folders[case]).tokenizer
    words = [w for w in WORDS if len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1]
    assert len(words) > 20
    return words


def _long_words(case: str, folders: dict[str, Path], n: int) -> list[str]:
    words = _single_token_words(case, folders)
    return [words[(7 * i) % len(words)] for i in range(n)]


# --------------------------------------------------------------------------- against the cards


@pytest.mark.parametrize("case", list(FAMILIES))
def test_single_pair_matches_the_card(folders: dict[str, Path], case: str) -> None:
    family = _family(case)
    probs, logits = card_scores(family, folders[case], PAIRS[:1])
    scorer = _scorer(folders, case)
    assert scorer.score(*PAIRS[0][:1], [PAIRS[0][1]]) == pytest.approx(probs, abs=TOL)
    raw = _scorer(folders, case, normalize=False)
    assert raw.score_pairs(PAIRS[:1]) == pytest.approx(logits, abs=TOL)
    assert scorer.score_scale == "probability" and raw.score_scale == "logit"


@pytest.mark.parametrize("case", list(FAMILIES))
def test_mixed_length_batches_match_the_card(folders: dict[str, Path], case: str) -> None:
    family = _family(case)
    probs, logits = card_scores(family, folders[case], PAIRS)
    # Small budgets force several left-padded batches of different widths.
    scorer = _scorer(folders, case, batch_size=3, max_batch_tokens=400)
    got = scorer.score_pairs(PAIRS)
    assert max(abs(a - b) for a, b in zip(got, probs, strict=True)) < TOL
    raw = _scorer(folders, case, normalize=False, batch_size=32, max_batch_tokens=None)
    got_raw = raw.score_pairs(PAIRS)
    assert max(abs(a - b) for a, b in zip(got_raw, logits, strict=True)) < TOL
    # The scores spread, so a wrong template or position could not pass by accident.
    assert max(logits) - min(logits) > 0.5


@pytest.mark.parametrize("case", list(FAMILIES))
def test_truncation_keeps_the_template_and_cuts_only_the_document(
    folders: dict[str, Path], case: str
) -> None:
    family = _family(case)
    path = folders[case]
    query = "what is alpha beta?"
    words = _long_words(case, folders, 600)
    # Tokens of everything but the document's words, counted on the card's own prompt.
    fixed = card_length(family, path, query, words[0]) - 1
    assert card_length(family, path, query, " ".join(words[:5])) == fixed + 5
    ours = fixed + 40
    scorer = _scorer(folders, case, max_length=ours, normalize=False)
    long_doc = " ".join(words)
    cut = " ".join(words[: ours - fixed])  # the room left inside the template, by hand
    assert card_length(family, path, query, cut) == ours
    got_long, got_cut = scorer.score(query, [long_doc, cut])
    assert got_long == pytest.approx(got_cut, abs=1e-6)
    _, card_long = card_scores(
        family, path, [(query, long_doc)], max_length=card_max_length(family, path, ours)
    )
    assert got_long == pytest.approx(card_long[0], abs=TOL)
    assert scorer.count_tokens([(query, long_doc), (query, cut)]) == [ours, ours]
    # A shorter cut is a different input, so the window really ends where the room ends.
    shorter = " ".join(words[: ours - fixed - 3])
    assert scorer.score(query, [shorter])[0] != pytest.approx(got_cut, abs=1e-6)


@pytest.mark.parametrize("case", list(FAMILIES))
def test_chunking_scores_each_window_inside_the_template(
    folders: dict[str, Path], case: str
) -> None:
    family = _family(case)
    path = folders[case]
    query = "what is alpha beta?"
    words = _long_words(case, folders, 150)
    fixed = card_length(family, path, query, words[0]) - 1
    ours, overlap = fixed + 48, 8
    width = ours - fixed
    starts = [0]
    while starts[-1] + width < len(words):
        starts.append(starts[-1] + width - overlap)
    windows = [(query, " ".join(words[s : s + width])) for s in starts]
    probs, logits = card_scores(family, path, windows)
    assert len(windows) >= 3
    chunked = _scorer(folders, case, max_length=ours, chunking=True, chunk_overlap=overlap)
    long_doc = " ".join(words)
    assert chunked.score(query, [long_doc]) == pytest.approx([max(probs)], abs=TOL)
    raw = _scorer(
        folders, case, max_length=ours, chunking=True, chunk_overlap=overlap, normalize=False
    )
    assert raw.score(query, [long_doc]) == pytest.approx([max(logits)], abs=TOL)
    assert raw.count_tokens([(query, long_doc)]) == [
        sum(card_length(family, path, q, d) for q, d in windows)
    ]
    capped = _scorer(
        folders, case, max_length=ours, chunking=True, chunk_overlap=overlap, max_chunks=1
    )
    assert capped.score(query, [long_doc]) == pytest.approx([probs[0]], abs=TOL)
    # A short document is one window, scored as without chunking.
    short = card_scores(family, path, PAIRS[:2])[0]
    assert chunked.score_pairs(PAIRS[:2]) == pytest.approx(short, abs=TOL)


@pytest.mark.parametrize(
    ("case", "instruction"),
    [
        ("qwen3-reranker", "Given a question, retrieve the passage that answers it"),
        ("mxbai-rerank-v2", "Find the document that answers the question"),
        ("bge-reranker-gemma", "Predict whether passage B contains an answer to query A."),
    ],
)
def test_instructions_match_the_card(folders: dict[str, Path], case: str, instruction: str) -> None:
    family = _family(case)
    default = _scorer(folders, case)
    told = default.with_instruction(instruction)
    expected, _ = card_scores(family, folders[case], PAIRS, instruction=instruction)
    assert told.score_pairs(PAIRS) == pytest.approx(expected, abs=TOL)
    assert _scorer(folders, case, instruction=instruction).score_pairs(PAIRS) == pytest.approx(
        expected, abs=TOL
    )
    assert told.score_pairs(PAIRS) != pytest.approx(default.score_pairs(PAIRS), abs=1e-4)
    assert told.score_id != default.score_id
    assert told.model is default.model  # the copy shares the weights
    assert told.with_instruction(None).score_id == default.score_id
    assert default.instruction == TEMPLATES[family].default_instruction


def test_a_template_without_an_instruction_slot_refuses_one(folders: dict[str, Path]) -> None:
    plain = PromptTemplate(
        name="plain-yes-no",
        query="Query: {query}\n",
        document="Document: {document}",
        suffix=("\nRelevant:",),
        yes="yes",
        no="no",
        instruction_format=None,
    )
    path = folders["qwen3-reranker"]
    with pytest.raises(ValueError, match="takes no instruction"):
        CausalLMReranker(path, template=plain, instruction="be strict", device="cpu")
    scorer = CausalLMReranker(path, template=plain, device="cpu", normalize=False)
    with pytest.raises(ValueError, match="takes no instruction"):
        scorer.with_instruction("be strict")
    assert scorer.family == "custom"
    # A custom template scores the prompt exactly as written.
    ref = _ref(path)
    tok = ref.tokenizer
    query, doc = PAIRS[0]
    ids = (
        tok(f"Query: {query}\n", add_special_tokens=False)["input_ids"]
        + tok(f"Document: {doc}", add_special_tokens=False)["input_ids"]
        + tok("\nRelevant:", add_special_tokens=False)["input_ids"]
    )
    with torch.no_grad():
        last = ref.model(torch.tensor([ids])).logits[0, -1]
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    assert scorer.score(query, [doc])[0] == pytest.approx(float(last[yes] - last[no]), abs=TOL)


@pytest.mark.parametrize(
    "bad",
    [
        {"query": "no slot", "document": "{document}"},
        {"query": "{query}", "document": "{document} and more"},
        {"query": "{query}", "document": "{document}", "suffix": ("{query}",)},
        {"query": "{query}", "document": "{document}", "instruction_format": "{instruction}"},
        {"query": "{query}", "document": "{document}", "yes": ""},
    ],
)
def test_malformed_templates_are_refused(bad: dict[str, Any]) -> None:
    settings = {"name": "bad", "instruction_format": None, **bad}
    with pytest.raises(ValueError, match="template 'bad'"):
        PromptTemplate(**settings)


def test_braces_in_texts_are_kept_as_text(qwen3: CausalLMReranker) -> None:
    query, doc = "what is {query}?", "a {document} with {instruction}"
    probs, _ = card_scores("qwen3-reranker", Path(qwen3.model_name), [(query, doc)])
    assert qwen3.score(query, [doc]) == pytest.approx(probs, abs=TOL)


# --------------------------------------------------------------------------- families and loading


def test_family_detection_by_name() -> None:
    assert detect_family("Qwen/Qwen3-Reranker-0.6B") == "qwen3-reranker"
    assert detect_family("/cache/models--Qwen--Qwen3-Reranker-8B/snapshots/abc") == "qwen3-reranker"
    assert detect_family("tomaarsen/Qwen3-Reranker-0.6B-seq-cls") == "qwen3-reranker"
    assert detect_family("BAAI/bge-reranker-v2-gemma") == "bge-reranker-gemma"
    assert detect_family("mixedbread-ai/mxbai-rerank-large-v2") == "mxbai-rerank-v2"
    assert detect_family("mixedbread-ai/mxbai-rerank-large-v1") is None
    assert detect_family("BAAI/bge-reranker-v2-m3") is None
    assert detect_family("Qwen/Qwen3-0.6B") is None
    assert detect_family(None) is None


def test_family_from_the_config_when_the_name_says_nothing(
    folders: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="rerank_core.causal_lm"):
        scorer = CausalLMReranker(folders["mxbai-rerank-v2"], device="cpu")
    assert scorer.family == "mxbai-rerank-v2"
    assert "guessed from model_type 'qwen2'" in caplog.text


def test_unknown_family_and_wrong_tokenizer_are_clear_errors(folders: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="unknown family 'llama-reranker'"):
        CausalLMReranker(folders["qwen3-reranker"], family="llama-reranker", device="cpu")
    # A template whose answer word is several tokens for this vocabulary is refused by name.
    odd = PromptTemplate(
        name="odd", query="{query}", document="{document}", yes="zqxyes", instruction_format=None
    )
    with pytest.raises(ValueError, match=r"answer word 'zqxyes'.*not one"):
        CausalLMReranker(folders["bge-reranker-gemma"], template=odd, device="cpu")
    with pytest.raises(ValueError, match="needs a model"):
        CausalLMReranker("", device="cpu")
    with pytest.raises(ValueError, match="no room for a document"):
        CausalLMReranker(folders["qwen3-reranker"], family="qwen3-reranker", max_length=40)


def test_load_reranker_builds_it_from_a_folder_named_like_the_hub_id(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    from rerank_core import load_reranker

    named = tmp_path / "Qwen3-Reranker-0.6B"
    shutil.copytree(folders["qwen3-reranker"], named)
    scorer = load_reranker(str(named), backend="causal-lm", device="cpu")
    assert isinstance(scorer, CausalLMReranker)
    assert scorer.family == "qwen3-reranker"
    probs, _ = card_scores("qwen3-reranker", folders["qwen3-reranker"], PAIRS)
    assert scorer.score_pairs(PAIRS) == pytest.approx(probs, abs=TOL)


def test_load_reranker_reads_the_hugging_face_cache(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    from rerank_core import load_reranker

    repo = tmp_path / "hub" / "models--Qwen--Qwen3-Reranker-0.6B"
    commit = "0" * 40
    shutil.copytree(folders["qwen3-reranker"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    scorer = load_reranker(
        "Qwen/Qwen3-Reranker-0.6B",
        backend="causal-lm",
        cache_dir=tmp_path / "hub",
        local_files_only=True,
        device="cpu",
        cache_entries=100,
    )
    assert scorer.identity()["family"] == "qwen3-reranker"
    assert scorer.identity()["template"] == "qwen3-reranker"
    probs, _ = card_scores("qwen3-reranker", folders["qwen3-reranker"], PAIRS)
    assert scorer.score_pairs(PAIRS) == pytest.approx(probs, abs=TOL)


def test_cpu_bf16_autocast_stays_close(folders: dict[str, Path]) -> None:
    exact = _scorer(folders, "qwen3-reranker", normalize=False)
    fast = _scorer(folders, "qwen3-reranker", normalize=False, autocast="bfloat16")
    assert fast.identity()["autocast"] == "bfloat16" and exact.identity()["autocast"] is None
    assert fast.score_id != exact.score_id
    got, want = fast.score_pairs(PAIRS), exact.score_pairs(PAIRS)
    # bf16 keeps 8 bits of mantissa: a loose bound that holds on every CPU.
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 0.25


# --------------------------------------------------------------------------- seq-cls exports


def _to_seq_cls(src: Path, dest: Path, rows: str) -> Path:
    """Fold the LM head's answer rows into a *ForSequenceClassification head, by hand."""
    causal = transformers.AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(str(src))
    config = transformers.AutoConfig.from_pretrained(str(src))
    config.architectures = [
        type(causal).__name__.replace("ForCausalLM", "ForSequenceClassification")
    ]
    config.num_labels = 2 if rows == "no,yes" else 1
    seq = transformers.AutoModelForSequenceClassification.from_config(config)
    seq.model.load_state_dict(causal.model.state_dict())
    head = causal.get_output_embeddings().weight.detach()
    if rows == "yes-no":
        yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
        weight = (head[yes] - head[no])[None]
    elif rows == "no,yes":
        yes = tok("1", add_special_tokens=False)["input_ids"][0]
        no = tok("0", add_special_tokens=False)["input_ids"][0]
        weight = torch.stack([head[no], head[yes]])
    else:
        weight = head[tok("Yes", add_special_tokens=False)["input_ids"][0]][None]
    with torch.no_grad():
        seq.score.weight.copy_(weight)
    seq.save_pretrained(str(dest))
    tok.save_pretrained(str(dest))
    return dest


@pytest.mark.parametrize(
    ("case", "name", "rows"),
    [
        ("qwen3-reranker", "Qwen3-Reranker-tiny-seq-cls", "yes-no"),
        ("mxbai-rerank-v2", "mxbai-rerank-base-v2-seq", "no,yes"),
        ("bge-reranker-gemma", "bge-reranker-v2-gemma-seq-cls", "yes"),
    ],
)
def test_seq_cls_exports_score_like_the_causal_model(
    folders: dict[str, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    case: str,
    name: str,
    rows: str,
) -> None:
    from rerank_core import CrossEncoderScorer

    family = _family(case)
    export = _to_seq_cls(folders[case], tmp_path / name, rows)
    assert detect_family(export) == family
    seq = CausalLMReranker(export, device="cpu", batch_size=4)
    assert seq.head == "seq-cls" and seq.family == family
    probs, logits = card_scores(family, folders[case], PAIRS)
    assert seq.score_pairs(PAIRS) == pytest.approx(probs, abs=TOL)
    raw = CausalLMReranker(export, device="cpu", normalize=False)
    assert raw.score_pairs(PAIRS) == pytest.approx(logits, abs=TOL)
    # The plain cross-encoder path reads the same export without the template: wrong scores,
    # so it warns by name.
    with caplog.at_level("WARNING", logger="rerank_core.cross_encoder"):
        plain = CrossEncoderScorer(str(export), device="cpu", max_length=256)
    assert "backend='causal-lm'" in caplog.text
    wrong = plain.score_pairs(PAIRS)
    assert max(abs(a - b) for a, b in zip(wrong, probs, strict=True)) > 0.01


def test_cross_encoder_scorer_points_a_causal_lm_reranker_to_its_backend(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    from rerank_core import CrossEncoderScorer

    named = tmp_path / "mxbai-rerank-base-v2"
    shutil.copytree(folders["mxbai-rerank-v2"], named)
    with pytest.raises(ValueError, match=r"mxbai-rerank-v2 LLM reranker.*backend='causal-lm'"):
        CrossEncoderScorer(str(named), device="cpu")


# --------------------------------------------------------------------------- the contract


DOCS = [d for _, d in PAIRS]
QUERY = "what is artificial intelligence?"


def test_rerank_orders_by_score_and_applies_top_n_and_threshold(qwen3: CausalLMReranker) -> None:
    scores = qwen3.score(QUERY, DOCS)
    order = sorted(range(len(DOCS)), key=lambda i: -scores[i])
    results = qwen3.rerank(QUERY, DOCS)
    assert [r.index for r in results] == order
    assert [r.score for r in results] == [scores[i] for i in order]
    assert [r.document for r in results] == [DOCS[i] for i in order]
    assert [r.index for r in qwen3.rerank(QUERY, DOCS, top_n=2)] == order[:2]
    cut = sorted(scores)[3]
    kept = qwen3.rerank(QUERY, DOCS, score_threshold=cut, top_n=2)
    assert all(r.score is not None and r.score >= cut for r in kept) and len(kept) == 2
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)


def test_scores_do_not_depend_on_order_or_batching(qwen3: CausalLMReranker) -> None:
    base = dict(zip(PAIRS, qwen3.score_pairs(PAIRS), strict=True))
    reordered = list(reversed(PAIRS))
    again = qwen3.score_pairs(reordered)
    assert again == pytest.approx([base[p] for p in reordered], abs=1e-6)
    one_by_one = [qwen3.score_pairs([p])[0] for p in PAIRS]
    assert one_by_one == pytest.approx([base[p] for p in PAIRS], abs=1e-6)


async def test_async_equals_sync(qwen3: CausalLMReranker) -> None:
    sync = qwen3.rerank(QUERY, DOCS, top_n=4)
    results = await asyncio.gather(*(qwen3.arerank(QUERY, DOCS, top_n=4) for _ in range(3)))
    for got in results:
        assert [r.index for r in got] == [r.index for r in sync]
        assert [r.score for r in got] == pytest.approx([r.score for r in sync], abs=1e-6)
    assert await qwen3.ascore(QUERY, DOCS) == pytest.approx(qwen3.score(QUERY, DOCS), abs=1e-6)


def test_errors_and_empty_input(qwen3: CausalLMReranker) -> None:
    assert qwen3.score(QUERY, []) == []
    assert qwen3.rerank(QUERY, []) == []
    with pytest.raises(ValueError, match="query"):
        qwen3.score("  ", DOCS)
    with pytest.raises(TypeError, match=r"documents\[1\]"):
        qwen3.score(QUERY, ["ok", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="documents"):
        qwen3.score(QUERY, "a bare string")
    with pytest.raises(ValueError, match="top_n"):
        qwen3.rerank(QUERY, DOCS, top_n=0)
    with pytest.raises(ValueError, match="instruction"):
        qwen3.with_instruction("\ud800")


def test_inputs_are_not_mutated(qwen3: CausalLMReranker) -> None:
    docs = list(DOCS)
    pairs = list(PAIRS)
    qwen3.rerank(QUERY, docs, top_n=3)
    qwen3.score_pairs(pairs)
    assert docs == DOCS and pairs == PAIRS


def test_window_and_gate_leave_candidates_unscored(folders: dict[str, Path]) -> None:
    windowed = _scorer(folders, "qwen3-reranker", rerank_window=3)
    results = windowed.rerank(QUERY, DOCS)
    assert sorted(r.index for r in results[:3]) == [0, 1, 2]
    assert [r.index for r in results[3:]] == [3, 4, 5, 6]
    assert all(r.score is None for r in results[3:])
    gated = _scorer(folders, "qwen3-reranker", should_rerank=lambda q: False)
    assert [r.score for r in gated.rerank(QUERY, DOCS)] == [None] * len(DOCS)


def test_identity_names_every_score_setting(qwen3: CausalLMReranker) -> None:
    ident = qwen3.identity()
    for key in ("family", "template", "template_sha", "instruction", "max_length", "dtype"):
        assert key in ident
    assert ident["instruction"] == QWEN3_INSTRUCTION
    assert ident["scale"] == "probability" and ident["head"] == "causal-lm"
    assert not math.isnan(qwen3.score(QUERY, ["x"])[0])
    assert "qwen3-reranker" in repr(qwen3)
    import rerank_core

    assert rerank_core.CausalLMReranker is CausalLMReranker
    assert rerank_core.PromptTemplate is PromptTemplate


def test_served_scores_equal_the_library(qwen3: CausalLMReranker) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    cohere = pytest.importorskip("cohere")
    from rerank_core.app.server import ServerSettings, create_app
    from tests.integration.live_server import running

    expected = qwen3.score(QUERY, DOCS)
    order = sorted(range(len(DOCS)), key=lambda i: -expected[i])
    app = create_app(qwen3, settings=ServerSettings(model_name="tiny-qwen3-reranker"))
    with running(app) as (url, _):
        reply = httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": DOCS}, timeout=60)
        assert reply.status_code == 200, reply.text
        results = reply.json()["results"]
        assert [r["index"] for r in results] == order
        assert [r["relevance_score"] for r in results] == pytest.approx(
            [expected[i] for i in order], abs=1e-6
        )
        co = cohere.Client(api_key="unused", base_url=url, timeout=60)
        res = co.rerank(query=QUERY, documents=DOCS, top_n=3, model="tiny-qwen3-reranker")
        assert [r.index for r in res.results] == order[:3]
        for r in res.results:
            assert r.relevance_score == pytest.approx(expected[r.index], abs=1e-6)


def test_one_scorer_shared_by_threads(qwen3: CausalLMReranker) -> None:
    import threading

    expected = qwen3.score_pairs(PAIRS)
    told = qwen3.with_instruction("Find the passage")
    results: list[list[float]] = []
    errors: list[BaseException] = []

    def work(scorer: CausalLMReranker) -> None:
        try:
            results.append(scorer.score_pairs(PAIRS))
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in [qwen3, told] * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 6
    other = told.score_pairs(PAIRS)
    plain = sum(r == pytest.approx(expected, abs=1e-6) for r in results)
    instructed = sum(r == pytest.approx(other, abs=1e-6) for r in results)
    assert (plain, instructed) == (3, 3)
