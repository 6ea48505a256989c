"""What a cascade costs and keeps: nDCG@10 and strong-stage work against the strong model alone.

For a rerank file with qrels (``trec-dl19/bm25_top100.jsonl``), each configuration ranks every
query:

* ``first stage``: the file's order (no model);
* ``fast``: the fast stage alone on every candidate;
* ``strong``: the strong stage alone on every candidate (the reference cost);
* ``strong @K`` (optional): the strong stage on the first stage's top K only (the rerank window,
  the usual cheap alternative at the same strong-stage cost);
* ``cascade K``: :class:`~rerank_core.CascadeReranker`: the fast stage on every candidate, the
  strong stage on the fast top K.

Each row reports nDCG@10 and MRR@10, the pairs each stage scored per query, the time per query
and its share of ``strong``'s. The ``fast`` and ``strong`` rows are timed for real; every stage
scores each pair once, so the window and cascade rows reuse those scores (their rankings are
exact) and their time is estimated from the two measured rows (the fast stage's time per query
plus the strong stage's time per pair of that query times the pairs scored). Cascade depths in
``timed`` run once more with nothing cached, timed for real, as a check of the estimate.

``ceiling Recall@K`` is the share of relevant candidates inside the top K that the strong stage
gets to see (the first stage's for a window, the fast stage's for a cascade): no strong model can
rank a relevant candidate it never sees.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rerank_core.base import Reranker, RerankResult

logger = logging.getLogger(__name__)

__all__ = ["cascade_to_markdown", "run_cascade_bench", "save_cascade_bench"]


def _machine() -> dict[str, Any]:
    import torch

    from rerank_core.cpu import cpu_flags

    flags = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}
    return {
        "platform": platform.platform(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpu_flags": sorted(cpu_flags() & flags),
    }


def _score(
    ranked: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]], rel: int
) -> dict[str, float]:
    """Mean nDCG@10 and MRR@10 over the queries of ``ranked`` (trec_eval's definitions)."""
    import ir_measures as irm

    measures = {"nDCG@10": irm.nDCG @ 10, "MRR@10": irm.RR(rel=rel) @ 10}
    names = {v: k for k, v in measures.items()}
    run = {q: {d: float(len(docs) - i) for i, d in enumerate(docs)} for q, docs in ranked.items()}
    totals = dict.fromkeys(measures, 0.0)
    sub = {q: dict(qrels[q]) for q in ranked}
    for m in irm.iter_calc(list(measures.values()), sub, run):
        totals[names[m.measure]] += float(m.value)
    return {k: v / len(ranked) for k, v in totals.items()}


def _recall(
    ranked: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]], k: int, rel: int
) -> float:
    """Mean share of a query's relevant candidates (grade >= ``rel``) inside its top ``k``."""
    shares = []
    for q, docs in ranked.items():
        relevant = {d for d in docs if qrels[q].get(d, 0) >= rel}
        if relevant:
            shares.append(len(relevant & set(docs[:k])) / len(relevant))
    return sum(shares) / len(shares) if shares else 0.0


def run_cascade_bench(
    data: str | os.PathLike[str],
    qrels: str | os.PathLike[str],
    fast: Reranker,
    strong: Reranker,
    *,
    ks: Sequence[int] = (10, 20, 30, 50),
    windows: bool = True,
    timed: Sequence[int] = (),
    relevance_level: int = 2,
    max_queries: int | None = None,
    setup: Mapping[str, Any] | None = None,
    command: str = "",
    progress: bool = False,
) -> dict[str, Any]:
    """Run every configuration on a rerank file; return the report (see the module docs).

    Args:
        data: Rerank file (JSON lines ``{qid, query, candidates}``), candidates in first-stage
            order.
        qrels: TREC qrels.
        fast: The fast stage.
        strong: The strong stage.
        ks: Cascade depths K (and window sizes, with ``windows``).
        windows: Also rank with the strong stage on the first stage's top K.
        timed: Cascade depths K to run once more with nothing cached, timed for real.
        relevance_level: Lowest grade counted relevant by MRR and the recall ceiling (TREC DL
            uses 2).
        max_queries: Use the first N judged queries only.
        setup: How the stages were built, recorded as is.
        command: The command line, recorded.
        progress: Show a progress bar per configuration.

    Raises:
        ValueError: a K is not a positive int, or no query has judgments.
    """
    from tqdm.auto import tqdm

    from rerank_core.app.evaluate import load_qrels, load_rerank_file
    from rerank_core.cache import CachedReranker
    from rerank_core.cascade import CascadeReranker

    depths = sorted({int(k) for k in ks})
    if not depths or any(k < 1 for k in depths):
        raise ValueError(f"ks must be positive ints, got {list(ks)!r}")
    queries, _ = load_rerank_file(data)
    judgments = load_qrels(qrels)
    judged = [q for q in queries if q.qid in judgments][:max_queries]
    if not judged:
        raise ValueError("no query of the rerank file has judgments in the qrels")
    docids = {q.qid: [c.docid for c in q.candidates] for q in judged}
    n_candidates = sum(len(d) for d in docids.values()) / len(judged)
    started = time.time()
    machine = _machine()

    def run(model: Reranker, label: str) -> tuple[dict[str, list[str]], list[float]]:
        model.rerank(judged[0].query, [c.text for c in judged[0].candidates[:8]])  # warm-up
        ranked: dict[str, list[str]] = {}
        times: list[float] = []
        for q in tqdm(judged, desc=label, unit="q", disable=not progress):
            texts = [c.text for c in q.candidates]
            t0 = time.perf_counter()
            results: list[RerankResult] = model.rerank(q.query, texts)
            times.append(time.perf_counter() - t0)
            ranked[q.qid] = [docids[q.qid][r.index] for r in results]
        return ranked, times

    rows: list[dict[str, Any]] = []

    def add(
        name: str,
        ranked: Mapping[str, Sequence[str]],
        times: Sequence[float] | None,
        fast_pairs: float,
        strong_pairs: float,
        k: int | None = None,
        ceiling: float | None = None,
        timing: str = "measured",
    ) -> None:
        row: dict[str, Any] = {
            "name": name,
            "k": k,
            **_score(ranked, judgments, relevance_level),
            "fast_pairs_per_query": fast_pairs,
            "strong_pairs_per_query": strong_pairs,
            "ceiling_recall_at_k": ceiling,
            "seconds": sum(times) if times is not None else None,
            "ms_per_query": 1000 * sum(times) / len(times) if times is not None else None,
            "timing": timing if times is not None else None,
        }
        rows.append(row)
        logger.info("%s: %s", name, row)

    # Each stage scores each pair once; the window and cascade rows take the scores from these
    # caches (same pairs, same scores), so their rankings are exact and the run stays short.
    fast_c = CachedReranker(fast, max_entries=10_000_000)
    strong_c = CachedReranker(strong, max_entries=10_000_000)
    first = {q: list(d) for q, d in docids.items()}
    add("first stage", first, None, 0, 0)
    fast_ranked, fast_times = run(fast_c, "fast")
    add("fast", fast_ranked, fast_times, n_candidates, 0)
    strong_ranked, strong_times = run(strong_c, "strong")
    add("strong", strong_ranked, strong_times, 0, n_candidates)
    sizes = [len(q.candidates) for q in judged]

    def estimate(k: int, with_fast: bool) -> list[float]:
        # The strong row's time per pair of each query, times the pairs this row scores.
        return [
            (f if with_fast else 0.0) + t * min(k, n) / n
            for f, t, n in zip(fast_times, strong_times, sizes, strict=True)
        ]

    for k in depths:
        per_query = sum(min(k, n) for n in sizes) / len(judged)
        if windows:
            window = copy.copy(strong_c)
            window.rerank_window = k
            ranked, _ = run(window, f"strong @{k}")
            ceiling = _recall(first, judgments, k, relevance_level)
            add(f"strong @{k}", ranked, estimate(k, False), 0, per_query, k, ceiling, "estimated")
        ranked, _ = run(CascadeReranker(fast_c, strong_c, k=k), f"cascade {k}")
        ceiling = _recall(fast_ranked, judgments, k, relevance_level)
        add(f"cascade {k}", ranked, estimate(k, True), n_candidates, per_query, k, ceiling,
            "estimated")  # fmt: skip
    for k in sorted({int(k) for k in timed}):
        # The real thing, nothing cached: checks the estimates above and the rankings.
        ranked, times = run(CascadeReranker(fast, strong, k=k), f"cascade {k} (timed)")
        per_query = sum(min(k, n) for n in sizes) / len(judged)
        ceiling = _recall(fast_ranked, judgments, k, relevance_level)
        add(f"cascade {k} (timed)", ranked, times, n_candidates, per_query, k, ceiling)
    base = sum(strong_times)
    for row in rows:
        if row["seconds"] is not None and base:
            row["time_vs_strong"] = row["seconds"] / base
        row["strong_pairs_vs_strong"] = row["strong_pairs_per_query"] / n_candidates
    return {
        "command": command,
        "data": str(data),
        "queries": len(judged),
        "candidates_per_query": n_candidates,
        "relevance_level": relevance_level,
        "setup": dict(setup or {}),
        "fast": fast.describe(),
        "strong": strong.describe(),
        "machine": machine,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "rows": rows,
    }


def cascade_to_markdown(report: Mapping[str, Any]) -> str:
    """The report as a Markdown table, with the command, the stages and the machine."""
    m = report["machine"]
    setup = report.get("setup") or {}
    lines = [
        f"Command: `{report['command']}`" if report["command"] else "",
        "",
        f"Data: `{report['data']}`, {report['queries']} queries, "
        f"{report['candidates_per_query']:g} candidates per query, relevant = grade ≥ "
        f"{report['relevance_level']} (MRR@10, ceiling).",
        "",
        "Stages: " + "; ".join(f"{k}: {v}" for k, v in setup.items()),
        "",
        f"Machine: {m['platform']}, {m['logical_cores']} logical cores, torch threads "
        f"{m['torch_threads']}, load average at start {m['load_average']}, flags "
        f"{', '.join(m['cpu_flags'])}.",
        "",
        "| configuration | nDCG@10 | MRR@10 | fast pairs/q | strong pairs/q | ceiling Recall@K "
        "| ms/query | time vs strong |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["rows"]:
        ceiling = f"{r['ceiling_recall_at_k']:.3f}" if r["ceiling_recall_at_k"] is not None else ""
        ms = f"{r['ms_per_query']:.0f}" if r["ms_per_query"] is not None else "n/a"
        ms = f"~{ms}" if r.get("timing") == "estimated" else ms
        share = f"{100 * r['time_vs_strong']:.0f} %" if r.get("time_vs_strong") else "n/a"
        lines.append(
            f"| {r['name']} | {r['nDCG@10']:.4f} | {r['MRR@10']:.4f} "
            f"| {r['fast_pairs_per_query']:g} | {r['strong_pairs_per_query']:g} | {ceiling} "
            f"| {ms} | {share} |"
        )
    lines += [
        "",
        "ceiling Recall@K: share of the relevant candidates inside the top K the strong stage "
        "sees (the first stage's for a window, the fast stage's for a cascade). "
        "ms/query with ~: estimated from the measured `fast` and `strong` rows (the fast "
        "stage's time per query plus the strong stage's time per pair of that query times the "
        "pairs it scores); rows marked (timed) ran for real with nothing cached.",
    ]
    return "\n".join(lines).lstrip("\n") + "\n"


def save_cascade_bench(
    report: Mapping[str, Any], out_dir: str | os.PathLike[str], stem: str = "cascade-dl19"
) -> dict[str, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(cascade_to_markdown(report), encoding="utf-8")
    return paths
