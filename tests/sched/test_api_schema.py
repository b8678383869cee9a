"""Schemathesis against /openapi.json, in process through the ASGI app: every operation,
bodies and parameters that fit the schema and ones that do not (negative mode).

Checks: never a 5xx; a refused request is a 4xx; every answer is the status code, content
type and shape the schema documents. Deterministic and bounded (a fixed number of cases
per operation), so CI runs the same cases every time.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from flexai_sched.app import create_app
from flexai_sched.backend import MemoryBackend
from flexai_sched.config import Settings
from flexai_sched.extender import Extender
from flexai_sched.state import ClusterState

from .fixtures import limits, node, pod

CASES_PER_OPERATION = 120


def _app() -> object:
    backend = MemoryBackend([node("big", 8), node("small", 2)], heartbeat_every=None)
    for name in ("a", "b"):
        backend.create_pod(pod(name, limits(1, cores=50)))
    return create_app(Extender(ClusterState(), backend, Settings(node_policy="binpack", card_policy="binpack")))


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=CASES_PER_OPERATION,
    deterministic=True,
    database="none",
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@schema.parametrize()
def test_every_operation_answers_as_documented_and_never_a_5xx(case: schemathesis.Case[Any]) -> None:
    response = case.call()
    assert response.status_code < 500, response.text
    case.validate_response(response, checks=CHECKS)
