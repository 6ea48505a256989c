"""``rag-rerank serve --ray``: the rerank app on Ray Serve, one scorer per replica.

The deployment (``ray_serve_url`` in ``conftest.py``) starts once per session on the session's
Ray; the Cohere SDK tests of ``test_server.py`` run against it too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")

from rerank_core.registry import load_reranker  # noqa: E402
from tests.integration.conftest import SERVER_DOCS, SERVER_KEY, SERVER_QUERY  # noqa: E402

pytestmark = pytest.mark.slow

QUERY = SERVER_QUERY
DOCS = [*SERVER_DOCS, ""]  # an empty passage too
AUTH = {"Authorization": f"Bearer {SERVER_KEY}"}


def test_v1_rerank_scores_equal_the_library(ray_serve_url: str, tiny_model_dir: Path) -> None:
    expected = load_reranker(tiny_model_dir, backend="torch", device="cpu").score(QUERY, DOCS)
    r = httpx.post(
        f"{ray_serve_url}/v1/rerank",
        json={"query": QUERY, "documents": DOCS},
        headers=AUTH,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny"
    served = {x["index"]: x["relevance_score"] for x in body["results"]}
    assert served == {i: pytest.approx(s, rel=1e-5, abs=1e-7) for i, s in enumerate(expected)}
    assert [x["index"] for x in body["results"]] == sorted(
        range(len(DOCS)), key=lambda i: -expected[i]
    )


def test_the_replica_serves_the_whole_app(ray_serve_url: str) -> None:
    """Auth, limits, health and metrics come from the same app as ``rag-rerank serve``."""
    no_key = httpx.post(f"{ray_serve_url}/v1/rerank", json={"query": QUERY, "documents": DOCS})
    assert no_key.status_code == 401 and no_key.json()["error_type"] == "unauthorized"
    blank = httpx.post(
        f"{ray_serve_url}/v2/rerank",
        json={"model": "tiny", "query": " ", "documents": DOCS},
        headers=AUTH,
    )
    assert blank.status_code == 400, blank.text
    health = httpx.get(f"{ray_serve_url}/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    metrics = httpx.get(f"{ray_serve_url}/metrics", timeout=30).text
    assert 'rag_rerank_http_requests_total{method="POST",path="/v1/rerank",status="401"}' in metrics


def test_ray_options_need_ray_and_exclude_each_other() -> None:
    from typer.testing import CliRunner

    from rerank_core.app.cli import _register, app

    _register()
    runner = CliRunner()
    without = runner.invoke(app, ["serve", "--replicas", "2"])
    assert without.exit_code == 2 and "--replicas need(s) --ray" in without.output
    both = runner.invoke(app, ["serve", "--ray", "--replicas", "2", "--max-replicas", "3"])
    assert both.exit_code == 2 and "not both" in both.output
    low = runner.invoke(app, ["serve", "--ray", "--min-replicas", "3", "--max-replicas", "2"])
    assert low.exit_code == 2 and "below min_replicas" in low.output


def test_autoscaling_bounds_become_ray_serve_options() -> None:
    from rerank_core.app.ray_serve import RayServeConfig

    opts = RayServeConfig(
        replicas=None, min_replicas=0, max_replicas=4, target_ongoing_requests=6
    ).deployment_options()
    assert opts["num_replicas"] == "auto"
    assert opts["autoscaling_config"] == {
        "min_replicas": 0,
        "initial_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 6,
    }
    fixed = RayServeConfig(replicas=3).deployment_options()
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["max_queued_requests"] == 256 and fixed["graceful_shutdown_timeout_s"] == 30.0


def test_missing_ray_serve_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from rerank_core.app.ray_serve import require_serve

    tomllib = pytest.importorskip("tomllib")

    monkeypatch.setitem(sys.modules, "ray.serve", None)
    with pytest.raises(ImportError, match=r"pip install 'rag-rerank\[ray-serve\]'"):
        require_serve()
    root = Path(__file__).resolve().parents[2]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(d.startswith("ray[serve]") for d in extras["ray-serve"])
    assert "ray-serve" in extras["all"][0]
