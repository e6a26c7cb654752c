"""uvicorn's HTTP protocol with one change: a request it cannot parse (a malformed request line, bad
headers) is answered in the service's one JSON error shape instead of uvicorn's plain text. Such errors
happen before the ASGI app sees anything, so the app's error handlers cannot reshape them."""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from curata.service.errors import error_body


class JsonErrorHttpToolsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        body = json.dumps(error_body("bad_request", f"the request is not valid HTTP: {msg}")).encode()
        head = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                 b"connection: close\r\n", b"\r\n", body]
        self.transport.write(b"".join(head))
        self.transport.close()
