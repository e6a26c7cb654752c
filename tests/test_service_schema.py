"""Fuzz the service's OpenAPI schema with schemathesis against a real server: whatever a client sends,
within the documented shapes (positive) or outside them (negative), the answer is never a 5xx and every
error has the one JSON shape."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from curata.service.app import create_app
from curata.service.settings import Settings
from test_service_support import running_server

pytestmark = pytest.mark.slow

# The operations, read from the app itself (no server needed to collect the tests); negative cases only
# where there is something to get wrong (parameters or a body).
_SPEC = create_app(Settings(workspace=Path("."))).openapi()["paths"]
OPERATIONS = sorted((method.upper(), path) for path, item in _SPEC.items() for method in item)
CASES = [(m, p, mode) for m, p in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode == GenerationMode.POSITIVE or _SPEC[p][m.lower()].get("parameters")
         or _SPEC[p][m.lower()].get("requestBody")]
EXAMPLES = 6  # per operation and generation mode


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from running_server(tmp_path_factory, "schema-log")


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def test_the_schema_lists_every_resource():
    paths = {path for _, path in OPERATIONS}
    for prefix in ("/v1/health", "/v1/ready", "/v1/items", "/v1/models", "/v1/predict", "/v1/colours",
                   "/v1/describe", "/v1/search", "/v1/clusters"):
        assert any(p.startswith(prefix) for p in paths), prefix


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {mode.value}" for m, p, mode in CASES])
def test_no_server_errors(api_schema, server, method, path, mode):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def check(case):
        response = case.call(base_url=server.url, timeout=60)
        case.validate_response(response, checks=[not_a_server_error])
        assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error"} and {"code", "message", "field"} == set(body["error"]), body

    check()
