"""Fuzz the service's OpenAPI schema with schemathesis against a real server: whatever a client sends,
within the documented shapes (positive) or outside them (negative), the answer is never a 5xx and every
error has the one JSON shape."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from curata.service.app import create_app
from curata.service.settings import Settings
from test_service_support import Server, service_workspace

pytestmark = pytest.mark.slow

# The operations, read from the app itself (no server needed to collect the tests); negative cases only
# where there is something to get wrong (parameters or a body).
_SPEC = create_app(Settings(workspace=Path("."))).openapi()["paths"]
OPERATIONS = sorted((method.upper(), path) for path, item in _SPEC.items() for method in item)


def _negatable(operation: dict) -> bool:
    """Whether anything of an operation can be sent invalid: a body, a query parameter, or a path parameter
    with constraints (any string is a valid plain path parameter; the key header is sent right here)."""
    return bool(operation.get("requestBody")) or any(
        p["in"] != "path" or set(p.get("schema", {})) - {"type", "title"} or p.get("schema", {}).get("type") != "string"
        for p in operation.get("parameters", []))


CASES = [(m, p, mode) for m, p in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode == GenerationMode.POSITIVE or _negatable(_SPEC[p][m.lower()])]
EXAMPLES = 6  # per operation and generation mode


KEY = "fuzz-key"
# The one check that cannot hold here: "schema-valid" bytes are not a decodable image, and the service
# rightly refuses them (415/422). Every other check schemathesis has runs ("--checks all").
IMAGE_BODIES = {p for p, item in _SPEC.items() for op in item.values()
                if "multipart/form-data" in op.get("requestBody", {}).get("content", {})}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server with an API key, so the authentication checks have something to check; wrong keys are
    not rate-limited here (the fuzzer sends many on purpose)."""
    key_file = tmp_path_factory.mktemp("schema-key") / "key"
    key_file.write_text(KEY)
    log = tmp_path_factory.mktemp("schema-log") / "server.log"
    # A copy: the key may write, and the fuzzer's edits must not reach the workspace other modules share.
    copy = tmp_path_factory.mktemp("schema-ws") / "ws"
    shutil.copytree(service_workspace(tmp_path_factory), copy)
    srv = Server(copy, "--api-key-file", str(key_file), "--max-auth-failures", "1000000",
                 log=log).wait(headers={"X-API-Key": KEY})
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def api_schema(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    schema.config.update(headers={"X-API-Key": KEY})
    return schema


def test_the_schema_lists_every_resource():
    paths = {path for _, path in OPERATIONS}
    for prefix in ("/v1/health", "/v1/ready", "/v1/items", "/v1/models", "/v1/predict", "/v1/colours",
                   "/v1/describe", "/v1/search", "/v1/clusters", "/v1/edits", "/v1/review", "/v1/export"):
        assert any(p.startswith(prefix) for p in paths), prefix


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {mode.value}" for m, p, mode in CASES])
def test_no_server_errors(api_schema, server, method, path, mode):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def check(case):
        response = case.call(base_url=server.url, timeout=60, headers={"X-API-Key": KEY})
        excluded = [positive_data_acceptance] if path in IMAGE_BODIES else []
        case.validate_response(response, headers={"X-API-Key": KEY}, excluded_checks=excluded)
        assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error"} and {"code", "message", "field"} == set(body["error"]), body

    check()
