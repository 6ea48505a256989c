"""``rag-rerank serve --ray``: the rerank server's app on Ray Serve, one scorer per replica.

Every replica builds its own scorer through :func:`rerank_core.registry.load_reranker` and
serves the very app :func:`~rerank_core.app.server.create_app` builds for ``rag-rerank serve``
(all endpoints, auth, limits, the dynamic batcher, ``/metrics``), wrapped with
``serve.ingress``. Ray Serve's HTTP proxy routes each request to a replica:

- **Replicas**: a fixed number (``replicas``) or autoscaling between ``min_replicas`` and
  ``max_replicas``, driven by queue depth: Ray Serve adds replicas while the requests ongoing
  per replica (queued in the replica's batcher or being scored) stay above
  ``target_ongoing_requests``, and removes them when they fall below.
- **Back-pressure**: a replica takes at most ``max_ongoing_requests`` at once; up to
  ``max_queue`` more wait in the proxy, beyond which Ray Serve answers 503.
- **Drain**: on shutdown (SIGTERM or Ctrl-C to the command, or :func:`stop`) Ray Serve stops
  routing to the replicas, lets each finish its ongoing requests (up to
  ``graceful_timeout_s``), then runs the app's own shutdown.
- **Batching**: each replica keeps the app's dynamic batcher (token-budgeted, one model call
  for all waiting requests). Ray Serve's ``@serve.batch`` was measured against it on the same
  replica (see ``docs/scaling.md``) and is not used.

What differs from the single-process server: the header deadline
(:attr:`~rerank_core.app.server.ServerSettings.header_timeout_s`) belongs to
:func:`~rerank_core.app.server.run_server` and does not apply behind Ray's proxy, and
``/metrics`` and ``/health`` describe the replica that answered (Ray exports its own
cluster-wide Serve metrics).

Requires the ``ray-serve`` extra: ``pip install 'rag-rerank[ray-serve]'``.

Example:
    >>> from rerank_core.app.ray_serve import RayServeConfig, start
    >>> url = start(RayServeConfig(backend="onnx-int8", replicas=2))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rerank_core.validation import check_number, check_positive_int

if TYPE_CHECKING:
    from rerank_core.app.server import ServerSettings

logger = logging.getLogger(__name__)

__all__ = [
    "APP_NAME",
    "RayServeConfig",
    "build_application",
    "connect",
    "require_serve",
    "start",
    "stop",
]

RAY_SERVE_HINT = "pip install 'rag-rerank[ray-serve]'"
#: Name of the Ray Serve application (``serve status`` shows it).
APP_NAME = "rag-rerank"


def require_serve() -> Any:
    """Import and return ``ray.serve``.

    Raises:
        ImportError: Ray Serve is not installed; the message gives the extra to install.
    """
    try:
        import fastapi  # noqa: F401
        import ray.serve
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"serve --ray runs on Ray Serve: {RAY_SERVE_HINT}") from exc
    return ray.serve


@dataclass(frozen=True)
class RayServeConfig:
    """How ``serve --ray`` deploys the rerank app.

    Attributes:
        model: Model id or folder; ``None`` is the bundled reranker.
        backend: A :data:`rerank_core.registry.BACKENDS` name (``"auto"`` too).
        options: More :func:`~rerank_core.registry.load_reranker` keyword arguments, the same
            for every replica (``num_threads``, ``batch_size``, ``device``, ...).
        settings: The app's limits, batching and auth (as for ``rag-rerank serve``); ``None``
            is the default :class:`~rerank_core.app.server.ServerSettings`.
        replicas: A fixed number of replicas; leave ``None`` to autoscale.
        min_replicas: Autoscaling floor (used when ``replicas`` is ``None``).
        max_replicas: Autoscaling ceiling.
        target_ongoing_requests: Requests ongoing per replica that autoscaling aims at.
        max_ongoing_requests: Most requests one replica takes at once (its batcher merges them).
        replica_cpus: Ray CPU slots per replica (give it the scorer's thread count).
        replica_gpus: GPUs per replica.
        graceful_timeout_s: Seconds a stopping replica may take to finish its requests.
        host: Interface of Ray Serve's HTTP proxy.
        port: Port of the proxy.
        address: Ray cluster to join (``"auto"``, ``"ray://head:10001"``); ``None`` starts a
            local Ray (or uses the one this process already runs).
    """

    model: str | None = None
    backend: str = "auto"
    options: Mapping[str, Any] = field(default_factory=dict)
    settings: ServerSettings | None = None
    replicas: int | None = 1
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 8.0
    max_ongoing_requests: int = 64
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    graceful_timeout_s: float = 30.0
    host: str = "127.0.0.1"
    port: int = 8000
    address: str | None = None

    def __post_init__(self) -> None:
        from rerank_core.registry import BACKENDS

        if self.backend != "auto" and self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose one of {list(BACKENDS)}")
        check_positive_int("replicas", self.replicas)
        if isinstance(self.min_replicas, bool) or not isinstance(self.min_replicas, int):
            raise ValueError(f"min_replicas must be an int, got {self.min_replicas!r}")
        if self.min_replicas < 0:
            raise ValueError(f"min_replicas must be >= 0, got {self.min_replicas}")
        check_positive_int("max_replicas", self.max_replicas, allow_none=False)
        if self.replicas is None and self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})"
            )
        check_positive_int("max_ongoing_requests", self.max_ongoing_requests, allow_none=False)
        for name in ("target_ongoing_requests", "graceful_timeout_s"):
            value = check_number(name, getattr(self, name), minimum=0, allow_none=False)
            if not value:
                raise ValueError(f"{name} must be above 0, got {value!r}")
        for name in ("replica_cpus", "replica_gpus"):
            check_number(name, getattr(self, name), minimum=0, allow_none=False)
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError(f"port must be an int, got {self.port!r}")
        if not 0 < self.port <= 65535:
            raise ValueError(f"port must be in 1..65535, got {self.port}")

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments of Ray Serve's ``Deployment.options`` for this configuration."""
        from rerank_core.app.server import ServerSettings

        settings = self.settings if self.settings is not None else ServerSettings()
        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            # Past this many waiting in front of the replicas, Ray Serve answers 503 at once.
            "max_queued_requests": settings.max_queue,
            "graceful_shutdown_timeout_s": self.graceful_timeout_s,
            "graceful_shutdown_wait_loop_s": 0.5,
            "ray_actor_options": {"num_cpus": self.replica_cpus, "num_gpus": self.replica_gpus},
        }
        if self.replicas is not None:
            options["num_replicas"] = self.replicas
        else:
            options["num_replicas"] = "auto"
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "initial_replicas": max(self.min_replicas, 1),
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        return options

    @property
    def most_replicas(self) -> int:
        """Replicas at the most (the CPU slots a local Ray needs follow from it)."""
        return self.replicas if self.replicas is not None else self.max_replicas


class RerankReplica:
    """One Ray Serve replica: a scorer of its own and the rerank server's app around it.

    Ray Serve calls ``__serve_build_asgi_app__`` after the constructor, so the app is built
    inside the replica, around the scorer the replica loaded.

    Args:
        model: Model id or folder; ``None`` is the bundled reranker.
        backend: A registry backend name or ``"auto"``.
        options: :func:`~rerank_core.registry.load_reranker` keyword arguments.
        settings: The app's settings.
    """

    def __init__(
        self,
        model: str | None,
        backend: str,
        options: Mapping[str, Any],
        settings: ServerSettings,
    ) -> None:
        from rerank_core.registry import load_reranker

        self.reranker = load_reranker(model, backend=backend, **dict(options))
        self.settings = settings
        self._app: Any = None

    def __serve_build_asgi_app__(self) -> Any:
        from rerank_core.app.server import create_app

        self._app = create_app(self.reranker, settings=self.settings)
        return self._app

    def check_health(self) -> None:
        """Ray Serve's health check: a replica whose batching worker died is replaced."""
        control = getattr(getattr(self._app, "state", None), "rerank_control", None)
        if control is not None and not control.batcher.alive and not control.batcher.draining:
            raise RuntimeError("the replica's batching worker is not running")


def build_application(config: RayServeConfig) -> Any:
    """The Ray Serve application (a bound deployment) for ``config``; run it with ``serve.run``."""
    from rerank_core.app.server import ServerSettings

    serve = require_serve()
    settings = config.settings if config.settings is not None else ServerSettings()
    ingress = serve.ingress()(RerankReplica)
    deployment = serve.deployment(name="RerankReplica")(ingress)
    model = str(config.model) if config.model else None
    return deployment.options(**config.deployment_options()).bind(
        model, config.backend, dict(config.options), settings
    )


def connect(config: RayServeConfig) -> bool:
    """Use this process's Ray, join ``config.address``, or start a local Ray; True if started.

    A local Ray gets one CPU slot per core, at least as many as the replicas take (Ray Serve's
    controller and proxy take none).
    """
    import ray

    if ray.is_initialized():
        return False
    common: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if config.address:
        ray.init(address=config.address, **common)
    else:
        slots = math.ceil(config.most_replicas * config.replica_cpus)
        ray.init(num_cpus=max(os.cpu_count() or 1, slots), include_dashboard=False, **common)
    return True


def start(config: RayServeConfig) -> str:
    """Start Ray (if needed) and Ray Serve, deploy the app, and return its base URL.

    Returns once every initial replica has loaded its scorer and answers.

    Raises:
        ImportError: Ray Serve is not installed.
        RuntimeError: a replica failed to start (for example the model could not be loaded).
    """
    serve = require_serve()
    connect(config)
    serve.start(http_options={"host": config.host, "port": config.port})
    app = build_application(config)
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    return f"http://{host}:{config.port}"


def stop(*, local_ray: bool = False, disconnect: bool = False) -> None:
    """Drain and remove the rerank app: in-flight requests finish, then the replicas stop.

    Args:
        local_ray: Also stop Ray Serve (this process started Ray for the app alone).
        disconnect: Then stop or leave this process's Ray (``ray.shutdown``).
    """
    import ray

    serve = require_serve()
    if not ray.is_initialized():
        return
    try:
        serve.delete(APP_NAME, _blocking=True)
        if local_ray:
            serve.shutdown()
    finally:
        if disconnect:
            ray.shutdown()
