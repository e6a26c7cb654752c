"""Who may talk to the service, decided from the request line and headers before any body is read:
the Host header (DNS rebinding), the API key (header, or the page's HttpOnly session cookie), the
origin of browser requests, and a limit on wrong keys per client address.

Why each rule:
- A keyless server on loopback is reachable from any web page through DNS rebinding unless the Host
  header is checked against the names it serves.
- Cookies are not port-isolated: a page on another port of the same host is "same-site" and a
  SameSite=Strict cookie still goes with its requests. So the cookie only counts on requests the
  browser marks same-origin (Sec-Fetch-Site), and writes through it need a custom header, which no
  other origin can send without a CORS preflight this server refuses.
- Checking the key before the body is read means a client with a wrong key holds no memory.
"""

from __future__ import annotations

import time
from collections import deque

from starlette.types import ASGIApp, Receive, Scope, Send

from curata.service.keys import KeyRing, anonymous
from curata.service.limits import header, reply
from curata.service.settings import Settings

SESSION_COOKIE = "curata_session"
CLIENT_HEADER = "X-Curata-Client"  # sent by the web page: a custom header makes a request non-simple
AUTH_SCOPE_KEY = "curata.authenticated"
IDENTITY_SCOPE_KEY = "curata.identity"  # the ApiKey a request came with (anonymous on a keyless server)
WRITE_PREFIXES = ("/v1/session", "/v1/edits", "/v1/review")  # routes whose non-GET requests change state
PUBLIC_PATHS = ("/v1/health", "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_WINDOW = 60.0  # seconds over which wrong keys are counted
_MAX_TRACKED = 10_000  # client addresses remembered at once (oldest forgotten first)
# A refused request: status, code, message, field, extra headers.
Refusal = tuple[int, str, str, "str | None", "dict[str, str] | None"]


def _cookie(scope: Scope, name: str) -> str | None:
    raw = header(scope, b"cookie")
    for part in (raw or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def host_name(value: str) -> str:
    """'example.org:9797' -> 'example.org', '[::1]:80' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith("/static/")


def _state_changing(method: str, path: str) -> bool:
    return method not in SAFE_METHODS and (path.endswith("/reload") or path.startswith(WRITE_PREFIXES))


class RequestGuard:
    """Pure ASGI middleware (outside the body limit, inside CORS so preflights are answered first)."""

    def __init__(self, app: ASGIApp, settings: Settings, keys: KeyRing | None):
        self.app = app
        self.settings = settings
        self.keys = keys
        self.anonymous = anonymous(settings.allow_writes)
        self.failures: dict[str, deque[float]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self._check(scope)
        if problem is not None:
            status, code, message, field, headers = problem
            await reply(send, status, code, message, field, headers)
            return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope) -> Refusal | None:
        method, path = scope["method"], scope["path"]
        host = header(scope, b"host") or ""
        if self.settings.allowed_hosts and host_name(host) not in self.settings.allowed_hosts:
            return 400, "invalid_host", f"this server does not answer to the host {host[:100]!r}", "Host", None
        same_origin = self._same_origin(scope, host)
        if method not in SAFE_METHODS and not same_origin:
            origin = header(scope, b"origin")
            if origin is None or origin not in self.settings.cors_origins:
                return (403, "cross_origin", "requests that change or compute something are not accepted from "
                        "another origin", "Origin", None)
        if _state_changing(method, path) and header(scope, b"x-api-key") is None \
                and header(scope, CLIENT_HEADER.lower().encode()) is None:
            return (403, "missing_header", f"this request needs the X-API-Key or the {CLIENT_HEADER} header",
                    CLIENT_HEADER, None)
        if self.keys is None or _is_public(path):
            scope[AUTH_SCOPE_KEY] = True
            scope[IDENTITY_SCOPE_KEY] = self.anonymous if self.keys is None else None
            return None
        return self._authenticate(scope, same_origin)

    def _same_origin(self, scope: Scope, host: str) -> bool:
        """Whether a browser says the request comes from this server's own page (non-browser clients send
        neither header and count as same-origin: they hold the key themselves)."""
        fetch_site = header(scope, b"sec-fetch-site")
        if fetch_site is not None:
            return fetch_site in ("same-origin", "none")
        origin = header(scope, b"origin")
        return origin is None or origin == f"{scope.get('scheme', 'http')}://{host}"

    def _authenticate(self, scope: Scope, same_origin: bool) -> Refusal | None:
        assert self.keys is not None
        client = (scope.get("client") or ("?", 0))[0]
        recent = self._recent_failures(client)
        if len(recent) >= self.settings.max_auth_failures:
            wait = max(1, int(_WINDOW - (time.monotonic() - recent[0])) + 1)
            return (429, "too_many_requests", f"too many wrong API keys from this address; retry in {wait} s",
                    "X-API-Key", {"retry-after": str(wait)})
        unauthorized = {"www-authenticate": "X-API-Key"}
        given = header(scope, b"x-api-key")
        if given is not None:
            identity = self.keys.match(given)
            if identity is None:
                recent.append(time.monotonic())
                return 401, "unauthorized", "the API key is not valid", "X-API-Key", unauthorized
        else:
            cookie = _cookie(scope, SESSION_COOKIE)
            if cookie is None:
                return 401, "unauthorized", "a valid X-API-Key header is required", "X-API-Key", unauthorized
            if not same_origin:  # another site's page: not counted, so it cannot lock the user out
                return (401, "unauthorized", "the session cookie counts only on this server's own page",
                        "X-API-Key", unauthorized)
            identity = self.keys.by_session(cookie)
            if identity is None:
                recent.append(time.monotonic())
                return (401, "unauthorized", "the session is not valid (was the key changed?); enter the key "
                        "again", "X-API-Key", unauthorized)
            if scope["method"] not in SAFE_METHODS and header(scope, CLIENT_HEADER.lower().encode()) is None:
                return (403, "missing_header", f"a request authenticated by the session cookie needs the "
                        f"{CLIENT_HEADER} header to change or compute something", CLIENT_HEADER, None)
        scope[AUTH_SCOPE_KEY] = True
        scope[IDENTITY_SCOPE_KEY] = identity
        return None

    def _recent_failures(self, client: str) -> deque[float]:
        now = time.monotonic()
        recent = self.failures.get(client)
        if recent is None:
            if len(self.failures) >= _MAX_TRACKED:
                self.failures.pop(next(iter(self.failures)))
            recent = self.failures[client] = deque()
        while recent and now - recent[0] > _WINDOW:
            recent.popleft()
        return recent
