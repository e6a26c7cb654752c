"""Dependencies shared by the routers: the service state and the API-key check."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from curata.service.errors import ApiError
from curata.service.state import ServiceState

API_KEY_COOKIE = "curata_api_key"  # what the web page sets, so <img> requests carry the key too
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                               description="Required when the server was started with an API key.")


def get_state(request: Request) -> ServiceState:
    return request.app.state.curata


def require_api_key(request: Request, key: str | None = Security(_api_key_header),
                    state: ServiceState = Depends(get_state)) -> None:
    """Everything but health needs the key when one is configured: the X-API-Key header, or the web
    page's cookie (SameSite=Strict, so other sites cannot make a browser send it)."""
    expected = state.api_key
    if expected is None:
        return
    given = key or request.cookies.get(API_KEY_COOKIE) or ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "a valid X-API-Key header is required" if not given
                       else "the API key is not valid", "X-API-Key", headers={"WWW-Authenticate": "X-API-Key"})
