"""One reranker of every kind the product ships, built the way users build them.

Every backend of :data:`rerank_core.registry.BACKENDS` is built by :func:`rerank_core.load_reranker`
on the tiny cross-encoder (local backends) or against a real ``rag-rerank serve`` on 127.0.0.1
(``http``), plus the caching and calibrating wrappers and a two-stage cascade. A new backend
joins the suite by being registered; one that needs another kind of model adds its builder to
``SPECIAL``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rerank_core import Reranker, load_reranker
from rerank_core.registry import backend_names


def _causal_lm(request: pytest.FixtureRequest) -> Reranker:
    from tests.llm_models import build_qwen3_reranker

    folder = build_qwen3_reranker(request.getfixturevalue("tmp_path_factory").mktemp("qwen3"))
    # backend="auto" must recognise the folder's architecture as an LLM reranker
    return load_reranker(folder, device="cpu")


#: Backends whose model is not the tiny cross-encoder: name -> builder(request) -> Reranker.
SPECIAL: dict[str, Callable[[pytest.FixtureRequest], Reranker]] = {"causal-lm": _causal_lm}

KINDS = [*backend_names(), "cached", "calibrated", "cascade"]


@pytest.fixture(scope="session")
def calibration_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Platt calibration that moves and flattens the tiny model's scores."""
    from rerank_core.calibration import Calibration

    path = tmp_path_factory.mktemp("calibration") / "calibration.json"
    return Calibration("platt", a=0.6, b=-0.4, dataset="synthetic").save(path)


@pytest.fixture(scope="session")
def live_server_url(tiny_model_dir: Path) -> Iterator[str]:
    """``rag-rerank serve``'s app on the tiny model, served by uvicorn on 127.0.0.1."""
    pytest.importorskip("fastapi")
    from rerank_core.app.server import ServerSettings, create_app
    from tests.integration.live_server import running

    scorer = load_reranker(tiny_model_dir, backend="torch", device="cpu")
    with running(create_app(scorer, settings=ServerSettings(model_name="tiny"))) as (url, _):
        yield url


def build(kind: str, request: pytest.FixtureRequest, **options: Any) -> Reranker:
    """A reranker of ``kind`` (a backend name, ``"cached"``, ``"calibrated"``), with ``options``."""
    if kind in SPECIAL:
        return SPECIAL[kind](request)
    if kind == "http":
        url = request.getfixturevalue("live_server_url")
        return load_reranker(
            backend="http", provider="generic", base_url=url, score_scale="probability", **options
        )
    model = request.getfixturevalue("tiny_model_dir")
    if kind == "cached":
        return load_reranker(model, backend="torch", device="cpu", cache_entries=1000, **options)
    if kind == "cascade":
        # The tiny model at a 32-token window first, then at its full window on the top 3: the
        # suite's texts fit in 32 tokens, so both stages agree and every check stays exact.
        fast = {"k": 3, "model": model, "backend": "torch", "max_length": 32}
        return load_reranker(model, backend="torch", device="cpu", cascade=fast, **options)
    if kind == "calibrated":
        path = request.getfixturevalue("calibration_file")
        return load_reranker(model, backend="torch", device="cpu", calibration=path, **options)
    return load_reranker(model, backend=kind, device="cpu", **options)


@pytest.fixture(scope="session", params=KINDS)
def reranker(request: pytest.FixtureRequest) -> Reranker:
    """Each shipped kind of reranker in turn (built once per session)."""
    return build(request.param, request)
