"""``rag-rerank calibrate``: fit a model's score calibration on a rerank file with judgments."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import typer

#: Thresholds whose kept shares the command prints.
THRESHOLDS = (0.3, 0.5)


def label_pairs(
    pairs: Sequence[tuple[str, str]],
    qrels: Mapping[str, Mapping[str, int]],
    relevance_level: int,
    unjudged: str = "auto",
) -> list[int | None]:
    """Binary labels of ``(qid, docid)`` pairs: 1 for grade >= ``relevance_level``, 0 below.

    Unjudged passages: ``"skip"`` gives ``None`` (left out), ``"negative"`` gives 0, and
    ``"auto"`` skips them when the judgments include grade-0 passages (pooled judgments such as
    TREC DL, where an unjudged passage is simply unknown) and counts them non-relevant otherwise
    (BEIR-style judgments that list only the relevant passages).
    """
    if unjudged not in ("auto", "skip", "negative"):
        raise ValueError(f"unjudged must be auto, skip or negative, got {unjudged!r}")
    if unjudged == "auto":
        has_zero = any(g <= 0 for judged in qrels.values() for g in judged.values())
        unjudged = "skip" if has_zero else "negative"
    out: list[int | None] = []
    for qid, docid in pairs:
        grade = qrels.get(qid, {}).get(docid)
        if grade is None:
            out.append(None if unjudged == "skip" else 0)
        else:
            out.append(int(grade >= relevance_level))
    return out


def summary(probabilities: Sequence[float], labels: Sequence[int]) -> dict[str, Any]:
    """ECE (10 bins), Brier score, log loss and the kept shares at each of :data:`THRESHOLDS`."""
    from rerank_core.calibration import brier_score, expected_calibration_error, log_loss

    pos = [p for p, y in zip(probabilities, labels, strict=True) if y]
    neg = [p for p, y in zip(probabilities, labels, strict=True) if not y]
    return {
        "ece": expected_calibration_error(probabilities, labels, 10),
        "brier": brier_score(probabilities, labels),
        "log_loss": log_loss(probabilities, labels),
        "relevant_kept": {str(t): sum(p >= t for p in pos) / len(pos) for t in THRESHOLDS},
        "nonrelevant_kept": {str(t): sum(p >= t for p in neg) / len(neg) for t in THRESHOLDS},
    }


def _read_scores(path: Path) -> dict[tuple[str, str], float]:
    from rerank_core.app.data import iter_jsonl

    out: dict[tuple[str, str], float] = {}
    for n, row in enumerate(iter_jsonl(path), 1):
        try:
            out[(str(row["qid"]), str(row["docid"]))] = float(row["score"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}:{n}: expected {{qid, docid, score}}") from None
    return out


def register(app: typer.Typer) -> None:
    """Add ``calibrate`` to ``app``."""
    from rerank_core.calibration import METHODS
    from rerank_core.registry import BACKENDS, backend_names

    @app.command("calibrate")
    def calibrate_command(
        data: Path = typer.Argument(
            ...,
            exists=True,
            dir_okay=False,
            help="A rerank file (JSON lines {qid, query, candidates: [{docid, text, label?}]}).",
        ),
        qrels: Path = typer.Option(
            None, "--qrels", exists=True, help="TREC or BEIR qrels (default: the file's labels)."
        ),
        model: str = typer.Option(
            None, "--model", "-m", help="Model folder or id (default: the bundled model)."
        ),
        backend: str = typer.Option(
            "torch", "--backend", "-b", help=f"One of {', '.join(backend_names())}."
        ),
        provider: str = typer.Option(None, help="--backend http: the provider preset."),
        base_url: str = typer.Option(None, help="--backend http: the service root."),
        method: str = typer.Option("platt", help=f"One of {', '.join(METHODS)}."),
        relevance_level: int = typer.Option(
            1, help="Lowest grade counted relevant (TREC DL: 2; grades 0 and 1 are not)."
        ),
        unjudged: str = typer.Option(
            "auto",
            help="Unjudged candidates: skip, negative, or auto (skip when the judgments "
            "include grade 0, else negative).",
        ),
        depth: int = typer.Option(None, help="Use the first N candidates of each query."),
        device: str = typer.Option(None, help="Device for local models (default: best)."),
        batch_size: int = typer.Option(32, help="Pairs per forward pass."),
        scores: Path = typer.Option(
            None,
            exists=True,
            help="Reuse raw scores (JSON lines {qid, docid, score}) instead of scoring.",
        ),
        scores_scale: str = typer.Option("logit", help="Scale of --scores: logit or probability."),
        save_scores: Path = typer.Option(None, help="Write the raw scores here (JSON lines)."),
        out: Path = typer.Option(
            None,
            "--out",
            "-o",
            help="Where to write the calibration (default: calibration.json in the model folder).",
        ),
        name: str = typer.Option(None, help="Dataset name stored with it (default: file path)."),
    ) -> None:
        """Fit a calibration of a model's scores and print ECE, Brier and log loss before/after."""
        from rerank_core.app.evaluate import load_qrels, load_rerank_file
        from rerank_core.calibration import (
            CALIBRATION_FILE,
            fit_calibration,
            to_probability,
        )
        from rerank_core.registry import load_reranker

        if method not in METHODS:
            raise typer.BadParameter(f"--method must be one of {METHODS}, got {method!r}")
        spec = BACKENDS.get(backend)
        if spec is None:
            raise typer.BadParameter(f"unknown --backend {backend!r}; known: {backend_names()}")
        try:
            queries, labels = load_rerank_file(data, depth)
            judgments = load_qrels(qrels) if qrels is not None else labels
        except (ValueError, FileNotFoundError) as exc:
            raise typer.BadParameter(str(exc)) from None
        if not judgments:
            raise typer.BadParameter(f"{data} has no 'label' fields: pass --qrels")
        options: dict[str, Any] = (
            {k: v for k, v in (("device", device), ("batch_size", batch_size)) if v is not None}
            if spec.local
            else {k: v for k, v in (("provider", provider), ("base_url", base_url)) if v}
        )
        try:
            reranker = load_reranker(model, backend=backend, calibration=False, **options)
        except (ValueError, TypeError, ImportError, OSError) as exc:
            raise typer.BadParameter(f"cannot build the {backend} reranker: {exc}") from None
        identity = reranker.identity()
        bundled: Path | None = None
        if spec.local:
            from rerank_core.cross_encoder import DEFAULT_MODEL_DIR, bundled_model_path

            bundled = DEFAULT_MODEL_DIR if model is None else bundled_model_path(model)
        if bundled is not None:  # no install path in a file that ships with the model
            identity["model"] = bundled.name
        if out is None:
            folder: Path | None = None
            if bundled is not None:
                folder = bundled
            elif spec.local and Path(model).is_dir():
                folder = Path(model)
            if folder is None:
                raise typer.BadParameter("the model has no local folder: pass -o FILE")
            out = folder / CALIBRATION_FILE

        keys = [(q.qid, c.docid) for q in queries if q.qid in judgments for c in q.candidates]
        ys = label_pairs(keys, judgments, relevance_level, unjudged)
        if scores is not None:
            scale = scores_scale
            try:
                given = _read_scores(scores)
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from None
            missing = [k for k, y in zip(keys, ys, strict=True) if y is not None and k not in given]
            if missing:
                raise typer.BadParameter(f"--scores lacks {len(missing)} pairs, e.g. {missing[0]}")
            raw = [given.get(k, float("nan")) for k in keys]
        else:
            scale = reranker.score_scale
            raw = []
            for q in queries:
                if q.qid in judgments:
                    raw += reranker.score(q.query, [c.text for c in q.candidates])
            if save_scores is not None:
                with save_scores.open("w", encoding="utf-8") as fh:
                    for (qid, docid), s in zip(keys, raw, strict=True):
                        fh.write(json.dumps({"qid": qid, "docid": docid, "score": s}) + "\n")
        chosen = [(s, y) for s, y in zip(raw, ys, strict=True) if y is not None]
        if not chosen:
            raise typer.BadParameter("no candidate has a judgment: check the qrels ids")
        xs, ls = [s for s, _ in chosen], [int(y) for _, y in chosen]
        try:
            cal = fit_calibration(
                xs,
                ls,
                method=method,
                scale=scale,
                dataset=name or str(data),
                relevance_level=relevance_level,
                model=identity,
            )
            before = summary([float(p) for p in to_probability(xs, scale)], ls)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        after = summary(cal.apply(xs, scale=scale), ls)
        cal.save(out)
        typer.echo(
            f"{cal.kind} calibration fitted on {cal.pairs} pairs ({cal.positives} relevant, "
            f"grade >= {relevance_level}; {len(keys) - len(chosen)} unjudged left out) "
            f"of {len(queries)} queries"
        )
        if cal.kind != "isotonic":
            typer.echo(f"parameters: a = {cal.a:.6f}, b = {cal.b:.6f}")
        else:
            typer.echo(f"knots: {len(cal.knots_x)}")
        typer.echo("")
        typer.echo("| on the fitting data | ECE (10 bins) | Brier | log loss |")
        typer.echo("| --- | ---: | ---: | ---: |")
        for label, s in (("before (raw sigmoid)", before), ("after", after)):
            typer.echo(f"| {label} | {s['ece']:.4f} | {s['brier']:.4f} | {s['log_loss']:.4f} |")
        typer.echo("")
        typer.echo(
            "| threshold | relevant kept before | after | non-relevant kept before | after |"
        )
        typer.echo("| ---: | ---: | ---: | ---: | ---: |")
        for t in THRESHOLDS:
            k = str(t)
            typer.echo(
                f"| {t} | {before['relevant_kept'][k]:.1%} | {after['relevant_kept'][k]:.1%} | "
                f"{before['nonrelevant_kept'][k]:.1%} | {after['nonrelevant_kept'][k]:.1%} |"
            )
        typer.echo(f"\ncalibration: {out}")
