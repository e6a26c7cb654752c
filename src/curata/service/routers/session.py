"""The web page's session: the key is sent once in X-API-Key and exchanged for an HttpOnly cookie, so no
script on the page (or elsewhere) can read it, and the page's image requests still authenticate."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from curata.service.deps import get_state, require_api_key
from curata.service.errors import ApiError
from curata.service.guard import SESSION_COOKIE
from curata.service.keys import session_token
from curata.service.state import ServiceState

router = APIRouter(prefix="/v1/session", tags=["session"], dependencies=[Depends(require_api_key)])


@router.post("", status_code=204, response_class=Response,
             summary="Exchange the X-API-Key header for the page's HttpOnly session cookie")
def open_session(request: Request, state: ServiceState = Depends(get_state)) -> Response:
    response = Response(status_code=204)
    if state.keys is None:  # nothing to remember: the server needs no key
        return response
    given = request.headers.get("x-api-key")
    key = state.keys.match(given) if given is not None else None
    if key is None:  # the guard has checked it; this only finds which key it was
        raise ApiError(401, "unauthorized", "send the key in the X-API-Key header to open a session", "X-API-Key")
    response.set_cookie(SESSION_COOKIE, session_token(key.key), httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
    return response


@router.delete("", status_code=204, response_class=Response, summary="Forget the page's session cookie")
def close_session() -> Response:
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
