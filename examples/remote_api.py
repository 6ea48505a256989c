"""Rerank through a rerank API: the hosted bge-reranker-v2-m3, or a local server.

The query "什么是人工智能？" and five retrieved passages (two of them noise) are reranked
asynchronously, then only passages scoring above 0.3 are kept for the LLM.

* With ``SILICONFLOW_API_KEY`` set, SiliconFlow's hosted ``BAAI/bge-reranker-v2-m3`` scores them.
* Otherwise a local ``rag-rerank serve`` is started on 127.0.0.1 (a free port) with the bundled
  model, or ``--model PATH``, and called through the same :class:`~rerank_core.HTTPReranker`
  with the ``generic`` (Cohere-shaped) preset.
* ``--url URL`` uses an already running Cohere-shaped endpoint instead.

Run::

    python examples/remote_api.py                      # local server, bundled model
    SILICONFLOW_API_KEY=sk-... python examples/remote_api.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

from rerank_core import HTTPReranker, RerankResult

QUERY = "什么是人工智能？"
PASSAGES = [
    "人工智能是计算机科学的一个分支，它企图了解智能的实质，并生产出一种新的能以人类智能相似的方式做出反应的智能机器。",
    "苹果是一种水果，富含维生素和纤维，有助于健康。",
    "机器学习是人工智能的一个重要子领域，它使计算机能够从数据中学习并做出预测或决策。",
    "今天天气很好，适合户外活动。",
    "深度学习是机器学习的一个分支，它模仿人脑神经网络的工作方式。",
]
THRESHOLD = 0.3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def local_server(model: str | None, *, startup_timeout: float = 180.0) -> Iterator[str]:
    """Start ``rag-rerank serve`` on 127.0.0.1 and yield its base URL; stop it afterwards."""
    port = _free_port()
    command = [sys.executable, "-m", "rerank_core.app.cli", "serve"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    if model:
        command += ["--model", model]
    process = subprocess.Popen(command)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"rag-rerank serve exited with code {process.returncode}; see its output above"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the rerank server did not start in {startup_timeout:g} s")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def rerank(reranker: HTTPReranker) -> list[RerankResult]:
    """Score every passage (the async path: the event loop stays free meanwhile)."""
    async with reranker:
        return await reranker.arerank(QUERY, PASSAGES)


def show(results: Sequence[RerankResult], source: str) -> None:
    """Print the original order, the reranked order and what passes the threshold."""
    print(f"【查询词】: {QUERY}\n")
    print("【原始文档顺序（召回结果）】:")
    for i, passage in enumerate(PASSAGES, 1):
        print(f"{i}. {passage}")
    print(f"\n【重排后的结果 ({source})】:")
    for rank, r in enumerate(results, 1):
        print(f"排名 {rank} [得分: {r.score:.4f}] {r.document}")
    kept = [r for r in results if r.score is not None and r.score > THRESHOLD]
    print(f"\n【得分 > {THRESHOLD} 的文档（送入 LLM）】: {len(kept)} / {len(results)}")
    for r in kept:
        print(f"- [{r.score:.4f}] {r.document}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="Model folder for the local server (default: bundled).")
    parser.add_argument("--url", help="Use this running Cohere-shaped endpoint (base URL).")
    args = parser.parse_args(argv)

    if args.url:
        show(asyncio.run(rerank(HTTPReranker("generic", base_url=args.url))), args.url)
    elif os.environ.get("SILICONFLOW_API_KEY"):
        # bge-reranker-v2-m3 takes no instruction (only Qwen3-Reranker models use one).
        reranker = HTTPReranker("siliconflow", model="BAAI/bge-reranker-v2-m3")
        show(asyncio.run(rerank(reranker)), "SiliconFlow BAAI/bge-reranker-v2-m3")
    else:
        with local_server(args.model) as url:
            reranker = HTTPReranker("generic", base_url=url, timeout=60)
            show(asyncio.run(rerank(reranker)), f"local rag-rerank serve at {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
