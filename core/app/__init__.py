"""Commands: the CLI, training, evaluation, benchmarks and the server."""

from __future__ import annotations
