"""Fusion with the first stage through every entry point: adapters, server, eval, tune-fusion."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from langchain_core.documents import Document

from langchain_rerank import CrossEncoderReranker, RerankRetriever
from rerank_core import load_reranker
from rerank_core.fusion import Fusion
from tests.fakes import KeywordRetriever, TableScorer

DOCS = ["a", "b", "c", "d", "e"]
TABLE = {"a": 0.10, "b": 0.20, "c": 0.30, "d": 0.40, "e": 0.90}
SPEC = "rrf:weight=0.5,k=1"


def _expected(spec: str | None, first: list[float] | None = None) -> list[str]:
    ranked = TableScorer(TABLE).rerank("q", DOCS, fusion=spec or "none", first_stage_scores=first)
    return [r.document for r in ranked]


# ------------------------------------------------------------------------------- LangChain


def test_langchain_compressor_fuses_like_the_library_and_keeps_documents():
    docs = [Document(page_content=d, metadata={"bm25": float(10 - i)}) for i, d in enumerate(DOCS)]
    before = [d.model_copy(deep=True) for d in docs]
    default = CrossEncoderReranker(scorer=TableScorer(TABLE, fusion=SPEC), top_n=None)
    out = default.compress_documents(docs, "q")
    assert [d.page_content for d in out] == _expected(SPEC)
    assert all(d.metadata["relevance_score"] == TABLE[d.page_content] for d in out)
    assert all("fused_score" in d.metadata for d in out)
    assert docs == before
    off = CrossEncoderReranker(scorer=TableScorer(TABLE, fusion=SPEC), top_n=None, fusion="none")
    assert [d.page_content for d in off.compress_documents(docs, "q")] == _expected(None)
    by_score = CrossEncoderReranker(
        scorer=TableScorer(TABLE),
        top_n=None,
        fusion="linear:weight=0.3,evidence=score",
        first_stage_score_key="bm25",
    )
    first = [float(10 - i) for i in range(5)]
    got = asyncio.run(by_score.acompress_documents(docs, "q"))
    assert [d.page_content for d in got] == _expected("linear:weight=0.3,evidence=score", first)
    docs[2] = Document(page_content="c", metadata={})
    with pytest.raises(ValueError, match=r"document 2 has no metadata\['bm25'\]"):
        by_score.compress_documents(docs, "q")


def test_langchain_retriever_takes_the_fusion_field():
    base = KeywordRetriever(documents=[Document(page_content=d) for d in DOCS], k=5)
    retriever = RerankRetriever(base_retriever=base, reranker=TableScorer(TABLE), k=5, fusion=SPEC)
    recalled = [d.page_content for d in base.invoke("q")]
    expected = TableScorer(TABLE).rerank("q", recalled, fusion=SPEC)
    assert [d.page_content for d in retriever.invoke("q")] == [r.document for r in expected]


# ------------------------------------------------------------------------------- LlamaIndex


def test_llamaindex_postprocessor_fuses_with_node_scores():
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from llamaindex_rerank import CrossEncoderRerank

    first = [0.1, 0.2, 9.0, 0.3, 0.4]
    nodes = [
        NodeWithScore(node=TextNode(text=d), score=s) for d, s in zip(DOCS, first, strict=True)
    ]
    spec = "linear:weight=0.3,evidence=score"
    post = CrossEncoderRerank(scorer=TableScorer(TABLE), top_n=None, fusion=spec)
    out = post.postprocess_nodes(nodes, QueryBundle("q"))
    assert [n.node.get_content() for n in out] == _expected(spec, first)
    assert [n.score for n in out] == [TABLE[n.node.get_content()] for n in out]
    assert [n.score for n in nodes] == first  # the caller's nodes keep their scores
    unscored = [NodeWithScore(node=TextNode(text=d)) for d in DOCS]
    rank_only = CrossEncoderRerank(scorer=TableScorer(TABLE), top_n=None, fusion=SPEC)
    out = rank_only.postprocess_nodes(unscored, QueryBundle("q"))
    assert [n.node.get_content() for n in out] == _expected(SPEC)
    with pytest.raises(ValueError, match="needs first_stage_scores"):
        post.postprocess_nodes(unscored, QueryBundle("q"))


# ------------------------------------------------------------------------------- server


def test_server_fuses_by_default_and_per_request():
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from rerank_core.app.server import ServerSettings, create_app
    from tests.integration.live_server import running

    scorer = TableScorer(TABLE, fusion=SPEC)
    with running(create_app(scorer, settings=ServerSettings(model_name="t"))) as (url, _):
        with httpx.Client(base_url=url, timeout=30) as http:
            health = http.get("/health").json()
            assert health["fusion"] == Fusion.parse(SPEC).spec()
            body = {"query": "q", "documents": DOCS}
            res = http.post("/v1/rerank", json=body).json()["results"]
            assert [DOCS[r["index"]] for r in res] == _expected(SPEC)
            assert [r["relevance_score"] for r in res] == [TABLE[DOCS[r["index"]]] for r in res]
            assert all("fused_score" in r for r in res)
            none = {**body, "fusion": {"method": "none"}}
            res = http.post("/v2/rerank", json=none).json()["results"]
            assert [DOCS[r["index"]] for r in res] == _expected(None)
            assert all("fused_score" not in r for r in res)
            first = [1.0, 1, 100, 1, 1]
            objs = [{"text": d, "first_stage_score": f} for d, f in zip(DOCS, first, strict=True)]
            linear = {"method": "linear", "weight": 0.2}  # evidence auto: scores when all have one
            res = http.post("/v1/rerank", json={"query": "q", "documents": objs, "fusion": linear})
            spec = "linear:weight=0.2,evidence=score"
            assert [DOCS[r["index"]] for r in res.json()["results"]] == _expected(spec, first)
            tei = {"query": "q", "texts": DOCS, "fusion": {"method": "rrf", "weight": 0}}
            res = http.post("/rerank", json=tei).json()
            assert [r["index"] for r in res] == [0, 1, 2, 3, 4]
            for bad, message in (
                ({**body, "fusion": {"method": "borda"}}, "method"),
                ({**body, "fusion": {"method": "rrf", "weight": 2}}, "weight"),
                ({**body, "fusion": {"method": "rrf", "depth": 3}}, "depth"),
                ({**body, "documents": [{"text": "a", "first_stage_score": "x"}]}, "first_stage"),
            ):
                r = http.post("/v1/rerank", json=bad)
                assert r.status_code == 400, r.text
                assert message in r.text


# ------------------------------------------------------------------------------- eval and tuning


def _rerank_file(path: Path, order: list[str], texts: dict[str, str] | None = None) -> Path:
    rows = [
        {
            "qid": "1",
            "query": "q",
            "candidates": [
                {
                    "docid": d,
                    "text": d if texts is None else texts[d],
                    "first_stage_score": float(len(order) - i),
                }
                for i, d in enumerate(order)
            ],
        }
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_shows_first_stage_reranked_and_fused_side_by_side(tmp_path):
    from rerank_core.app.evaluate import evaluate_rerank_file

    data = _rerank_file(tmp_path / "run.jsonl", DOCS)
    qrels = {"1": {"a": 3, "e": 1}}
    report = evaluate_rerank_file(
        data,
        qrels,
        {"t": TableScorer(TABLE, fusion=SPEC)},
        fusions=["rrf:weight=0"],
        recall_at=[5],
    )
    names = [r.name for r in report.rows]
    own = f"t + {Fusion.parse(SPEC).spec()}"
    assert names == ["first stage", "t", own, "t + rrf:weight=0,k=60"]
    first_stage = report.row("first stage").metrics["nDCG@10"]
    assert report.row("t + rrf:weight=0,k=60").metrics["nDCG@10"] == pytest.approx(first_stage)
    assert report.row("t").metrics["nDCG@10"] < first_stage  # the reranker alone hurts here
    assert report.row("t + rrf:weight=0,k=60").fusion == "rrf:weight=0,k=60"
    assert "t + rrf:weight=0,k=60" in report.to_markdown()


def test_tune_fusion_keeps_the_best_setting_that_never_loses(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from rerank_core.app.cli import _register, app

    _register()
    scorer = load_reranker(str(tiny_model_dir), backend="torch")
    texts = [f"passage {w} about reranking" for w in ("one", "two", "three", "four", "five")]
    scores = scorer.score("q", texts)
    model_order = sorted(range(5), key=lambda i: -scores[i])
    # Judgments that make the first stage perfect on one file: the reranker alone loses there.
    by_id = {f"d{i}": t for i, t in enumerate(texts)}
    good = _rerank_file(tmp_path / "good.jsonl", [f"d{i}" for i in range(5)], by_id)
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("1 0 d0 3\n1 0 d1 2\n")
    weak = _rerank_file(tmp_path / "weak.jsonl", [f"d{i}" for i in reversed(range(5))], by_id)
    assert model_order != list(range(5))
    model = tmp_path / "model"
    model.symlink_to(tiny_model_dir, target_is_directory=True)
    out = tmp_path / "fusion.json"
    result = CliRunner().invoke(
        app,
        [
            "tune-fusion",
            str(good),
            str(weak),
            "--qrels",
            str(qrels),
            "-m",
            str(model),
            "-o",
            str(out),
            "--report",
            str(tmp_path / "report"),
        ],
    )
    assert result.exit_code == 0, result.output
    sweep = json.loads((tmp_path / "report" / "fusion.json").read_text())
    chosen = next(s for s in sweep["settings"] if s["fusion"] == sweep["chosen"])
    assert chosen["worst_delta"] >= -0.005
    eligible = [s["mean"] for s in sweep["settings"] if s["worst_delta"] >= -0.005]
    assert chosen["mean"] == max(eligible)
    assert "Pareto frontier" in result.output
    if sweep["chosen"] != "none":
        assert Fusion.load(out) == Fusion.parse(sweep["chosen"])
        assert load_reranker(str(out.parent / "model"), fusion=out).fusion == Fusion.load(out)
