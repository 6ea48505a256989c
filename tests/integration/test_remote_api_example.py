"""The remote-API example, run against real servers on 127.0.0.1."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("httpx")

from rerank_examples import remote_api
from tests.integration.rerank_http_server import RerankServer, toy_score


def test_example_against_a_running_endpoint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SILICONFLOW_API_KEY", raising=False)
    with RerankServer("generic") as server:
        assert remote_api.main(["--url", server.url]) == 0
    out = capsys.readouterr().out
    scores = sorted(
        ((toy_score(remote_api.QUERY, p), p) for p in remote_api.PASSAGES), reverse=True
    )
    lines = [line for line in out.splitlines() if line.startswith("排名")]
    assert lines == [f"排名 {i} [得分: {s:.4f}] {p}" for i, (s, p) in enumerate(scores, 1)]
    kept = sum(1 for s, _ in scores if s > remote_api.THRESHOLD)
    assert f"【得分 > 0.3 的文档（送入 LLM）】: {kept} / 5" in out
    assert len(server.seen) == 1


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("rerank_core.app.server") is None,
    reason="the rerank server (rag-rerank serve) is not part of this build",
)
def test_example_starts_a_local_server(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SILICONFLOW_API_KEY", raising=False)
    assert remote_api.main(["--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert sum(1 for line in out.splitlines() if line.startswith("排名")) == 5
