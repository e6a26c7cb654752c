"""Dependencies shared by the routers: the service state and the API-key requirement."""

from __future__ import annotations

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from curata.service.errors import ApiError
from curata.service.guard import AUTH_SCOPE_KEY
from curata.service.state import ServiceState

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                               description="Required when the server was started with an API key.")


async def get_state(request: Request) -> ServiceState:  # async: no thread-pool hop
    return request.app.state.curata


async def require_api_key(request: Request, key: str | None = Security(_api_key_header),
                    state: ServiceState = Depends(get_state)) -> None:
    """Everything but health needs the key when one is configured. `RequestGuard` checks it (the header,
    or the page's session cookie) before the body is read; this declares it in the OpenAPI document and
    refuses a request the guard did not pass (an app assembled without it)."""
    if state.api_key is not None and not request.scope.get(AUTH_SCOPE_KEY):
        raise ApiError(401, "unauthorized", "a valid X-API-Key header is required", "X-API-Key",
                       headers={"WWW-Authenticate": "X-API-Key"})
