"""Generated requests against the OpenAPI schema (schemathesis): whatever the body, the answer
is never a 500, every answer (its status, content type and body) is one the schema documents,
and every error is JSON with a one-sentence detail."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from helpers import cpu_registry
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.http.app import create_app
from service.settings import Settings

# schemathesis drives ASGI apps through starlette's TestClient, which warns about httpx.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:starlette.testclient")


# The answer's status is documented for its operation, its content type too, and its body
# validates against the documented schema of that status.
CONFORMANCE = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def app(tiny_store: Path) -> FastAPI:
    settings_ = Settings(store=tiny_store, max_rows=64, max_samples=256, request_timeout=10)
    return create_app(settings_, cpu_registry(tiny_store))


def test_generated_requests_never_get_a_server_error(app: FastAPI) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    statuses: list[int] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the schema itself is valid
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            response = case.call()
            statuses.append(response.status_code)
            assert response.status_code < 500, (case.as_curl_command(), response.text[:300])
            case.validate_response(response, checks=CONFORMANCE)
            if response.status_code >= 400:
                body = response.json()
                assert isinstance(body["detail"], str) and body["type"], body

        check()
    assert len(statuses) > 100 and 200 in statuses and 422 in statuses
