"""``rag-rerank tune-fusion``: choose a model's fusion with the first stage on judged data.

Reranking helps a weak first stage and can hurt a strong one. This command scores one or more
rerank files (each a first stage's top candidates, with judgments) once, then measures every
fusion of a grid on each file and keeps the setting with the best mean nDCG@10 among those that
lose at most ``--tolerance`` to the first stage alone on *every* file. Give it the first stages
your application may sit behind: the chosen setting never loses more than the tolerance to any
of them (on these queries), and the frontier it prints shows what each setting gives up.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import typer

from rerank_core.fusion import Fusion

#: The reranker's share tried by default.
WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: RRF offsets tried by default.
RRF_KS = (10.0, 30.0, 60.0)
#: Rank-evidence decay scales of ``linear`` tried by default.
RANK_SCALES = (3.0, 10.0, 30.0)


def default_grid(*, with_scores: bool) -> list[Fusion | None]:
    """The settings :func:`frontier` tries: none, RRF, linear on ranks (and on scores)."""
    grid: list[Fusion | None] = [None]
    grid += [Fusion("rrf", weight=w, k=k) for k in RRF_KS for w in WEIGHTS]
    grid += [
        Fusion("linear", weight=w, evidence="rank", rank_scale=c)
        for c in RANK_SCALES
        for w in WEIGHTS
    ]
    if with_scores:
        grid += [Fusion("linear", weight=w, evidence="score") for w in WEIGHTS]
    return grid


@dataclass(frozen=True, slots=True)
class Run:
    """One first stage's judged queries with the reranker's scores.

    Attributes:
        name: The first stage's name (the file's stem).
        queries: ``qid -> (docids in first-stage order, reranker scores, first-stage scores or
            None)``.
        scale: The reranker's score scale.
    """

    name: str
    queries: Mapping[str, tuple[list[str], list[float], list[float] | None]]
    scale: str


@dataclass
class Setting:
    """What one fusion setting gives on each first stage."""

    fusion: str
    ndcg: dict[str, float]
    delta: dict[str, float] = field(default_factory=dict)
    worst_delta: float = 0.0
    mean: float = 0.0
    kept: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Frontier:
    """The whole sweep: first stages alone, every setting, and the chosen one."""

    first_stage: dict[str, float]
    settings: list[Setting]
    tolerance: float
    chosen: str | None

    def setting(self, spec: str) -> Setting:
        """The row of ``spec`` (``"none"``: the reranker alone)."""
        for s in self.settings:
            if s.fusion == spec:
                return s
        raise KeyError(spec)

    def pareto(self) -> list[Setting]:
        """Settings no other beats on both worst loss and mean nDCG@10, best worst-loss first."""
        rows = sorted(self.settings, key=lambda s: (-s.worst_delta, -s.mean))
        out: list[Setting] = []
        for s in rows:
            if not out or s.mean > out[-1].mean:
                out.append(s)
        return out

    def to_markdown(self, *, limit: int | None = None) -> str:
        """The first stages, the reranker alone, the chosen setting and the Pareto frontier."""
        names = list(self.first_stage)
        head = ["setting", *names, "worst Δ", "mean", *(f"kept {n}" for n in names[:1])]
        lines = [
            "| " + " | ".join(head) + " |",
            "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |",
        ]

        def row(label: str, values: Mapping[str, float], s: Setting | None) -> None:
            cells = [label, *(f"{values[n]:.4f}" for n in names)]
            if s is None:
                cells += ["", f"{sum(values.values()) / len(values):.4f}", ""]
            else:
                kept = s.kept.get(names[0])
                cells += [
                    f"{s.worst_delta:+.4f}",
                    f"{s.mean:.4f}",
                    "n/a" if kept is None else f"{kept:.0%}",
                ]
            lines.append("| " + " | ".join(cells) + " |")

        row("first stage alone", self.first_stage, None)
        alone = self.setting("none")
        row("reranker alone", alone.ndcg, alone)
        if self.chosen is not None:
            chosen = self.setting(self.chosen)
            row(f"**chosen: {self.chosen}**", chosen.ndcg, chosen)
        lines.append(f"| *Pareto frontier (worst Δ vs mean)* |{' |' * (len(head) - 1)}")
        for s in self.pareto()[:limit]:
            row(s.fusion, s.ndcg, s)
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of the sweep."""
        return asdict(self)


def _ndcg10(ranked: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]) -> float:
    from rerank_core.app.evaluate import _measures, _score_run

    measures = {"nDCG@10": _measures([], 1)["nDCG@10"]}
    qids = list(ranked)
    return _score_run(ranked, qrels, qids, measures)["nDCG@10"]


def _order(run: Run, how: Fusion | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for qid, (docids, scores, first) in run.queries.items():
        values = (
            scores if how is None else how.fuse(scores, scale=run.scale, first_stage_scores=first)
        )
        order = sorted(range(len(docids)), key=lambda i: -values[i])
        out[qid] = [docids[i] for i in order]
    return out


def frontier(
    runs: Sequence[Run],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    grid: Sequence[Fusion | None] | None = None,
    tolerance: float = 0.005,
) -> Frontier:
    """Measure every setting of ``grid`` on every run and choose one.

    The chosen setting has the best mean nDCG@10 over the runs among the settings whose nDCG@10
    is at least the first stage's minus ``tolerance`` on every run; ``None`` when no setting (not
    even the reranker alone) qualifies, which the caller reports. ``kept`` is the share of the
    reranker's own gain over the first stage that a setting keeps, on runs where it gains.
    """
    if not runs:
        raise ValueError("frontier needs at least one run")
    with_scores = all(first is not None for run in runs for (_, _, first) in run.queries.values())
    settings_grid = list(grid) if grid is not None else default_grid(with_scores=with_scores)
    first_stage = {
        run.name: _ndcg10({q: d for q, (d, _, _) in run.queries.items()}, qrels) for run in runs
    }
    settings: list[Setting] = []
    alone: dict[str, float] = {}
    for how in settings_grid:
        if how is not None and how.evidence == "score" and not with_scores:
            continue
        ndcg = {run.name: _ndcg10(_order(run, how), qrels) for run in runs}
        if how is None:
            alone = ndcg
        s = Setting("none" if how is None else how.spec(), ndcg)
        s.delta = {n: v - first_stage[n] for n, v in ndcg.items()}
        s.worst_delta = min(s.delta.values())
        s.mean = sum(ndcg.values()) / len(ndcg)
        settings.append(s)
    for s in settings:
        for n, v in s.ndcg.items():
            gain = alone.get(n, first_stage[n]) - first_stage[n]
            s.kept[n] = (v - first_stage[n]) / gain if gain > 0 else None
    eligible = [s for s in settings if s.worst_delta >= -tolerance]
    chosen = max(eligible, key=lambda s: s.mean).fusion if eligible else None
    return Frontier(first_stage, settings, tolerance, chosen)


def read_runs(
    paths: Sequence[Path],
    qrels: Mapping[str, Mapping[str, int]],
    score: Any,
    scale: str,
) -> list[Run]:
    """Score each rerank file's judged queries into :class:`Run` objects.

    ``score(qid, docids, query, texts)`` returns the reranker's scores of one query's candidates.
    """
    from rerank_core.app.evaluate import load_rerank_file

    runs = []
    for path in paths:
        queries, _ = load_rerank_file(path)
        out: dict[str, tuple[list[str], list[float], list[float] | None]] = {}
        for q in queries:
            if q.qid not in qrels:
                continue
            docids = [c.docid for c in q.candidates]
            first = [c.first_stage_score for c in q.candidates]
            given = None if any(v is None for v in first) else [float(v or 0.0) for v in first]
            texts = [c.text for c in q.candidates]
            out[q.qid] = (docids, list(score(q.qid, docids, q.query, texts)), given)
        if not out:
            raise ValueError(f"{path}: no query has judgments in the qrels")
        runs.append(Run(path.name.split(".")[0].removesuffix("_top100"), out, scale))
    return runs


def _without_paths(value: Any) -> Any:
    """``value`` with every absolute path replaced by its last part (no install paths in files)."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    if isinstance(value, str) and Path(value).is_absolute():
        return Path(value).name
    return value


def register(app: typer.Typer) -> None:
    """Add ``tune-fusion`` to ``app``."""
    from rerank_core.registry import backend_names

    @app.command("tune-fusion")
    def tune_fusion_command(
        data: list[Path] = typer.Argument(
            ...,
            exists=True,
            dir_okay=False,
            help="Rerank files, one per first stage (JSON lines {qid, query, candidates: "
            "[{docid, text, first_stage_score?}]}).",
        ),
        qrels: Path = typer.Option(..., "--qrels", exists=True, help="TREC or BEIR qrels."),
        model: str = typer.Option(
            None, "--model", "-m", help="Model folder or id (default: the bundled model)."
        ),
        backend: str = typer.Option(
            "torch", "--backend", "-b", help=f"One of {', '.join(backend_names(local=True))}."
        ),
        tolerance: float = typer.Option(
            0.005, min=0.0, help="Most nDCG@10 the chosen setting may lose to any first stage."
        ),
        device: str = typer.Option(None, help="Device for local models (default: best)."),
        batch_size: int = typer.Option(32, help="Pairs per forward pass."),
        out: Path = typer.Option(
            None,
            "--out",
            "-o",
            help="Where to write the chosen fusion (default: fusion.json in the model folder).",
        ),
        report: Path = typer.Option(
            Path("fusion-results"), "--report", help="Folder for the sweep (JSON, Markdown)."
        ),
        dry_run: bool = typer.Option(False, "--dry-run", help="Measure only; write no fusion."),
        scores: Path = typer.Option(
            None,
            exists=True,
            help="Reuse the model's raw scores (JSON lines {qid, docid, score}, as "
            "--save-scores writes) instead of scoring; its calibration is applied as usual.",
        ),
        scores_scale: str = typer.Option(
            "probability", help="Scale of --scores: probability or logit."
        ),
        save_scores: Path = typer.Option(None, help="Write the raw scores here (JSON lines)."),
    ) -> None:
        """Sweep fusions of a model with each first stage; keep the best that never loses."""
        from rerank_core.app.evaluate import load_qrels
        from rerank_core.fusion import FUSION_FILE
        from rerank_core.registry import load_reranker

        try:
            judgments = load_qrels(qrels)
            reranker = load_reranker(
                model,
                backend=backend,
                fusion=False,
                **{k: v for k, v in (("device", device), ("batch_size", batch_size)) if v},
            )
        except (ValueError, TypeError, ImportError, OSError) as exc:
            raise typer.BadParameter(str(exc)) from None
        if out is None and not dry_run:
            from rerank_core.calibration import _beside

            beside = _beside(model)
            if beside is None:
                raise typer.BadParameter("the model has no local folder: pass -o FILE")
            out = beside.with_name(FUSION_FILE)
        from rerank_core.app.calibrate_cli import _read_scores
        from rerank_core.cache import CachedReranker
        from rerank_core.calibration import CalibratedReranker

        # Raw scores are cached (first stages share candidates) and calibrated as the model is.
        cal = reranker if isinstance(reranker, CalibratedReranker) else None
        raw_model = CachedReranker(cal.inner if cal else reranker, max_entries=10_000_000)
        raw_scale = cal.input_scale if cal else reranker.score_scale
        given = None
        if scores is not None:
            try:
                given = _read_scores(scores)
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from None
        raw: dict[tuple[str, str], float] = {}

        def score(qid: str, docids: list[str], query: str, texts: list[str]) -> list[float]:
            if given is not None:
                missing = [d for d in docids if (qid, d) not in given]
                if missing:
                    raise ValueError(f"--scores lacks query {qid} docid {missing[0]}")
                values = [given[(qid, d)] for d in docids]
                scale = scores_scale
            else:
                values = raw_model.score(query, texts)
                scale = raw_scale
            raw.update({(qid, d): v for d, v in zip(docids, values, strict=True)})
            return cal.calibration.apply(values, scale=scale) if cal else values

        source = "--scores" if given is not None else f"{reranker.model_name} ({backend})"
        typer.echo(f"scoring {len(data)} files with {source}")
        try:
            runs = read_runs(data, judgments, score, reranker.score_scale)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        if save_scores is not None:
            with save_scores.open("w", encoding="utf-8") as fh:
                for (qid, docid), v in raw.items():
                    fh.write(json.dumps({"qid": qid, "docid": docid, "score": v}) + "\n")
        result = frontier(runs, judgments, tolerance=tolerance)
        report.mkdir(parents=True, exist_ok=True)
        (report / "fusion.json").write_text(
            json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8"
        )
        markdown = result.to_markdown()
        (report / "fusion.md").write_text(markdown, encoding="utf-8")
        typer.echo(markdown)
        typer.echo(f"sweep: {report / 'fusion.json'} and {report / 'fusion.md'}")
        if result.chosen is None:
            typer.echo(
                f"no setting stays within {tolerance:g} of every first stage; nothing written",
                err=True,
            )
            raise typer.Exit(3)
        chosen = result.setting(result.chosen)
        typer.echo(f"chosen: {result.chosen} (worst Δ {chosen.worst_delta:+.4f})")
        if dry_run or out is None:
            return
        identity = _without_paths(reranker.identity())
        how = Fusion.parse(result.chosen)
        if how is None:
            typer.echo("the reranker alone never loses: no fusion needed; nothing written")
            return
        how.save(
            out,
            measured={
                "files": [str(p.name) for p in data],
                "tolerance": tolerance,
                "first_stage": result.first_stage,
                "fused": chosen.ndcg,
                "reranker_alone": result.setting("none").ndcg,
                "metric": "nDCG@10",
                "model": identity,
            },
        )
        typer.echo(f"wrote {out}")
