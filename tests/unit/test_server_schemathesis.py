"""Schemathesis against the in-process server: every check, a bounded number of examples.

The OpenAPI document is the contract (non-blank query, at least one document, size limits, the
bearer scheme); Schemathesis' engine runs its phases (examples, coverage, fuzzing) with all of its
checks: valid requests must be accepted, invalid ones refused with a documented 4xx, every answer
must match its declared status, content type and schema, no 5xx, and auth must not be ignored.
Run with and without an API key, on the ASGI app in this process (no sockets).
"""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

from schemathesis.config import SchemathesisConfig  # noqa: E402
from schemathesis.engine import Status, events, from_schema  # noqa: E402

from rerank_core.app.server import ServerSettings, create_app  # noqa: E402
from tests.fakes import WordOverlap  # noqa: E402

KEY = "schema-key-1"
# Small limits keep generated documents small, so each request scores in milliseconds.
LIMITS = {"max_documents": 8, "max_document_chars": 200}
REFUSALS = ["400", "401", "404", "405", "415"]


def _run(app, headers: dict[str, str] | None) -> tuple[int, list[str]]:
    """Run Schemathesis on ``app``; return the number of requests sent and every problem."""
    config = {
        "seed": 20241202,
        "generation": {"max-examples": 10, "deterministic": True},
        "phases": {"stateful": {"enabled": False}},  # no resources to create and fetch
        # Over a size limit is answered 413 (documented), which the check must count as a refusal.
        "checks": {"negative_data_rejection": {"expected-statuses": [*REFUSALS, "413"]}},
    }
    if headers:
        config["headers"] = headers
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", app, config=SchemathesisConfig.from_dict(config)
    )
    problems: list[str] = []
    requests = 0
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            requests += len(event.recorder.interactions)
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        problems.append(f"{event.label}: {check.name}: {failure.title}")
        elif isinstance(event, events.NonFatalError):
            problems.append(f"{event.label}: error: {event.value!r}")
        elif isinstance(event, events.FatalError):
            problems.append(f"fatal: {event.exception!r}")
    return requests, sorted(set(problems))


def test_server_without_a_key_keeps_its_contract(tiny_scorer):
    app = create_app(tiny_scorer, settings=ServerSettings(api_key=None, **LIMITS))
    requests, problems = _run(app, None)
    assert problems == []
    assert requests > 150  # every operation was really exercised


def test_server_with_a_key_keeps_its_contract():
    # Auth does not depend on the model: a fake keeps this run fast.
    app = create_app(WordOverlap(), settings=ServerSettings(api_key=KEY, **LIMITS))
    requests, problems = _run(app, {"Authorization": f"Bearer {KEY}"})
    assert problems == []
    assert requests > 150
