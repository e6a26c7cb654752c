"""Dependencies shared by the routers: the service state and the API-key requirement."""

from __future__ import annotations

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from curata.service.errors import ApiError
from curata.service.guard import AUTH_SCOPE_KEY, IDENTITY_SCOPE_KEY
from curata.service.keys import ApiKey
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
    if state.keys is not None and not request.scope.get(AUTH_SCOPE_KEY):
        raise ApiError(401, "unauthorized", "a valid X-API-Key header is required", "X-API-Key",
                       headers={"WWW-Authenticate": "X-API-Key"})


async def require_write(request: Request, _: None = Depends(require_api_key),
                        state: ServiceState = Depends(get_state)) -> ApiKey:
    """The caller, who must hold the `write` scope: a key that has it, or anyone on a keyless server started
    with --allow-writes. The guard has already required a custom header (no other site can send one)."""
    identity = request.scope.get(IDENTITY_SCOPE_KEY)
    if identity is None or not identity.can_write:
        if state.keys is None:
            raise ApiError(403, "read_only", "this server only reads: start it with --allow-writes, or with keys "
                           "that have the write scope (--keys-file)")
        raise ApiError(403, "forbidden", "this API key may only read (it has no write scope)", "X-API-Key")
    return identity
