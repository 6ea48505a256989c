"""Fast tests of the RAG chain's shared parts: corpus loading, score bookkeeping, settings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rerank_examples.common import (
    Candidate,
    CorpusError,
    LLMSettings,
    RecordingReranker,
    classify_candidates,
    load_corpus,
    numbered_sources,
    sample_corpus_path,
)
from tests.fakes import LengthScorer

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- corpus


def test_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus(tmp_path / "nope")


def test_folder_without_text_files(tmp_path: Path) -> None:
    (tmp_path / "a.pdf").write_bytes(b"%PDF")
    with pytest.raises(CorpusError, match=r"no \.txt or \.md files"):
        load_corpus(tmp_path)


def test_empty_files_make_an_empty_corpus(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(CorpusError, match="is empty"):
        load_corpus(tmp_path)


def test_non_utf8_file_is_named_with_offset(tmp_path: Path) -> None:
    (tmp_path / "ok.md").write_text("fine", encoding="utf-8")
    (tmp_path / "gbk.txt").write_bytes("人工智能".encode("gbk"))
    with pytest.raises(CorpusError, match=r"gbk\.txt is not UTF-8 .*offset 0"):
        load_corpus(tmp_path)


def test_folder_paragraphs_are_packed_and_ids_stable(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.md").write_text(
        "First paragraph.\n\nSecond paragraph.\n\n" + "word " * 300, encoding="utf-8"
    )
    first = load_corpus(tmp_path, max_chars=200)
    again = load_corpus(tmp_path, max_chars=200)
    assert [p.id for p in first] == [p.id for p in again]
    assert first[0].text == "First paragraph.\n\nSecond paragraph."
    assert all(len(p.text) <= 200 for p in first)
    assert {p.metadata["source"] for p in first} == {"sub/notes.md"}
    # nothing lost: every word of the file is in some passage
    assert sum(p.text.count("word") for p in first) == 300


def test_jsonl_fields_become_metadata(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    rows = [
        {"id": 7, "title": "T", "text": "alpha", "tags": ["a", "b"], "empty": None},
        {"text": "beta"},
        {"text": "beta"},  # the same passage twice is stored once
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    passages = load_corpus(path)
    assert [p.text for p in passages] == ["alpha", "beta"]
    assert passages[0].id == "7"
    assert passages[0].metadata == {"source": "c.jsonl", "title": "T", "tags": '["a", "b"]'}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"c\.jsonl:1: not valid JSON"),
        ('["a list"]', r"c\.jsonl:1: each line must be a JSON object"),
        ('{"title": "no text"}', r"c\.jsonl:1: needs a non-empty string 'text'"),
        ('{"id": [1], "text": "x"}', r"c\.jsonl:1: 'id' must be"),
    ],
)
def test_bad_jsonl_lines_are_named(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=message):
        load_corpus(path)


def test_jsonl_id_reused_for_another_text(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: id 'a' is used twice"):
        load_corpus(path)


def test_sample_corpus_has_the_demo_passages() -> None:
    passages = {p.id: p for p in load_corpus(sample_corpus_path())}
    assert len(passages) >= 30
    for pid in ("ai-definition-en", "movie-review-en", "apple-en", "weather-en", "ml-en", "dl-en"):
        assert pid in passages
    langs = {p.metadata["lang"] for p in passages.values()}
    assert langs == {"en", "zh"}
    assert "artificial intelligence" in passages["movie-review-en"].text.lower()


# --------------------------------------------------------------------------- scores


def test_recording_reranker_keeps_policy_and_scores() -> None:
    inner = LengthScorer(batch_size=2, rerank_window=3)
    rec = RecordingReranker(inner)
    docs = ["what is ai", "ai is", "apples", "what", "is"]
    results = rec.rerank("what is ai", docs)
    assert [r.score for r in results] == [r.score for r in inner.rerank("what is ai", docs)]
    scores = rec.pop_scores("what is ai")
    assert set(scores) == {"what is ai", "ai is", "apples"}  # the window: first three only
    assert scores["what is ai"] == pytest.approx(1.0)
    assert rec.pop_scores("what is ai") == {}


def _cand(i: int, text: str) -> Candidate:
    return Candidate(id=f"d{i}", text=text, metadata={}, vector_score=0.5, recall_rank=i + 1)


def test_classify_candidates_names_each_fate() -> None:
    recalled = [_cand(i, t) for i, t in enumerate(["a", "b", "c", "d", "e"])]
    scores = {"a": 0.9, "b": 0.1, "c": 0.8, "d": 0.5}  # "e" fell outside the window
    kept = classify_candidates(recalled, ["d0", "d2"], scores, threshold=0.3)
    assert [c.id for c in kept] == ["d0", "d2"]
    status = {c.id: c.status for c in recalled}
    assert status == {
        "d0": "kept",
        "d1": "below_threshold",
        "d2": "kept",
        "d3": "beyond_top_n",
        "d4": "outside_window",
    }
    assert recalled[4].relevance_score is None


def test_numbered_sources() -> None:
    assert numbered_sources(["x", "y"]) == "[1] x\n\n[2] y"


# --------------------------------------------------------------------------- settings


def test_llm_settings_never_show_the_key() -> None:
    s = LLMSettings("http://127.0.0.1:9/v1", "m", "sk-secret-123")
    assert "sk-secret" not in repr(s)
    assert "sk-secret" not in s.describe()
    assert s.scrub("401: bad key sk-secret-123") == "401: bad key ***"
    assert s.remote and not LLMSettings().remote


def test_every_extra_named_in_an_install_hint_exists() -> None:
    tomllib = pytest.importorskip("tomllib")
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    named: set[str] = set()
    chain_files = list((ROOT / "examples").rglob("*.py"))
    for path in chain_files:
        for group in re.findall(r"rag-rerank\[([a-z,]+)\]", path.read_text(encoding="utf-8")):
            named.update(group.split(","))
    assert named, "no install hints found"
    assert named <= extras, f"extras named but missing from pyproject: {named - extras}"
