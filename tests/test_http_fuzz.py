"""Fuzzing the HTTP API from its own OpenAPI document (schemathesis): no 5xx, answers match the spec.

The app runs in-process (ASGI) on a real SQLite store with a fleet and a
finished workload, and publishes to a real RabbitMQ with this test's own
names, so generated submissions go all the way to a confirmed message.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from prometheus_client import CollectorRegistry
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from scheduler.http import create_app
from scheduler.metrics import install_metrics
from scheduler.producer.publisher import Publisher
from scheduler.worker.state import WorkerState
from tests.harness import Deployment
from tests.test_http_support import settings_for, standard_workload

EXAMPLES = 25  # per operation and mode: about 600 requests in all, a few seconds


@pytest.fixture
def api_schema(lite: Deployment) -> Any:
    """The app's own OpenAPI document, loaded from the app in-process (ASGI), over a finished workload."""
    standard_workload(lite.store)
    registry = CollectorRegistry()
    settings_ = settings_for(lite)
    state = WorkerState(leader=False, epoch=3, strategy="least_loaded", broker_connected=True)
    install_metrics(registry, store=lite.store, settings=settings_, state=lambda: state)
    app = create_app(
        store=lite.store, publisher=Publisher(lite.amqp_url, lite.topology), state=lambda: state,
        registry=registry, settings=settings_,
    )  # fmt: skip
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # A generated invalid body can pass 64 KiB (a long string in an array): the 413 that refuses it
    # before any parsing is as much a rejection as a 422, and the operations document it.
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    return schema


# schemathesis' own pytest plugin (``from_fixture(...).parametrize()``) does not run on pytest 9 yet
# (it reads a private attribute pytest removed), so each operation's strategy is driven with
# Hypothesis directly: the same generators and the same checks.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_api_never_errors_and_matches_its_spec(
    api_schema: Any, lite: Deployment, mode: GenerationMode
) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/schedule", "/result/{task_id}", "/tasks/{task_id}", "/nodes"}
    # JSON Schema calls 4.0 an integer and cannot express the callback_url checks (a URL validator,
    # then the operator's allow-list), while the request model refuses both, on the queue and here
    # alike; so for POST /schedule and POST /plan (the same body) "valid by the schema" need not
    # mean "accepted".
    lenient = {"/schedule": [positive_data_acceptance], "/plan": [positive_data_acceptance]}
    failures: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(excluded_checks=lenient.get(case.operation.path, []))

        try:
            run()
        except Unsatisfiable:
            # Nothing invalid can be sent to an operation without parameters or body (GET /healthz).
            assert mode is GenerationMode.NEGATIVE, operation.path
        except Exception as exc:  # collect every operation's failure, not only the first
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)
    if mode is GenerationMode.POSITIVE:
        assert lite.queue_depth(lite.queue) > 0, "no generated submission was accepted and published"
