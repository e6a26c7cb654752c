"""`curata serve`: the HTTP API and the web page over a workspace (uvicorn running curata.service)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated

import typer

from curata.clibase import BadInput, WorkspaceOpt, app, console, err, handle_errors
from curata.workspace import Workspace, default_workspace


@app.command("serve")
@handle_errors
def serve_cmd(
    workspace: WorkspaceOpt = default_workspace(),
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for every interface, e.g. in "
                                      "a container).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9797,
    workers: Annotated[int, typer.Option(help="Worker processes; each loads the models once.")] = 1,
    api_key_file: Annotated[Path | None, typer.Option(help="File holding the API key clients must send in "
                                                      "X-API-Key (default: $CURATA_API_KEY; neither: no key).")
                            ] = None,
    keys_file: Annotated[Path | None, typer.Option(help='JSON file of named keys with scopes: {"keys": [{"name": '
                                                   '"ana", "key": "<16+ characters>", "scopes": ["read", '
                                                   '"write"]}]}. The name is what the edit log records.')] = None,
    allow_writes: Annotated[bool, typer.Option(help="Without any key, let every client edit the collection "
                                               "(off: a keyless server only reads; with keys, the write scope "
                                               "decides).")] = False,
    max_bulk_edit: Annotated[int, typer.Option(help="Most items one edit request may change (a filter, search "
                                               "or cluster selecting more is refused).")] = 100_000,
    cors_origin: Annotated[list[str] | None, typer.Option("--cors-origin", help="An origin allowed to call the "
                                                          "API from a browser (repeatable; default none).")] = None,
    allow_urls: Annotated[bool, typer.Option(help="Let clients send image URLs for the server to fetch (off: no "
                                             "server-side fetches).")] = False,
    allow_private_urls: Annotated[bool, typer.Option(help="With --allow-urls, also fetch from loopback and "
                                                     "private addresses.")] = False,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body, in MB.")] = 20.0,
    max_pixels: Annotated[int, typer.Option(help="Largest image, in pixels (decompression-bomb guard).")
                          ] = 40_000_000,
    max_images: Annotated[int, typer.Option(help="Most images in one request.")] = 16,
    compute_slots: Annotated[int, typer.Option(help="Image requests (colours, predict, describe, image search) "
                                               "computing at once in each worker; the rest wait their turn "
                                               "(threads of one process only fight over the GIL: add "
                                               "--workers instead).")] = 1,
    lazy: Annotated[bool, typer.Option("--lazy", help="Load bundles on first use instead of at start-up.")
                    ] = False,
    allowed_host: Annotated[list[str] | None, typer.Option("--allowed-host", help="A host name clients may use "
                                                           "to reach the server (repeatable). Requests naming "
                                                           "another Host are refused, which stops DNS rebinding. "
                                                           "Default: the loopback names when --host is a loopback "
                                                           "address, any name otherwise.")] = None,
    body_timeout: Annotated[float, typer.Option(help="Seconds a client has to send a whole request body.")
                            ] = 60.0,
    max_auth_failures: Annotated[int, typer.Option(help="Wrong API keys one client address may send per minute "
                                                   "before it gets 429 (for every request) until the minute "
                                                   "passes.")] = 30,
    log_level: Annotated[str, typer.Option(help="uvicorn log level: critical, error, warning, info, debug.")
                         ] = "info",
) -> None:
    """Serve the API (/v1/..., docs at /docs) and the web page (/) for a workspace."""
    import uvicorn

    from curata.service.settings import ENV_SETTINGS, Settings

    root = Workspace(workspace).root  # a folder, or a prefix on object storage
    if not root.is_dir():
        raise BadInput(f"workspace {workspace} does not exist; run `curata ingest` first")
    if workers < 1 or compute_slots < 1 or not 0 < port < 65536:
        raise BadInput("--workers and --compute-slots must be >= 1 and --port between 1 and 65535")
    if allow_private_urls and not allow_urls:
        raise BadInput("--allow-private-urls needs --allow-urls")
    if body_timeout <= 0 or max_auth_failures < 1:
        raise BadInput("--body-timeout must be > 0 seconds and --max-auth-failures >= 1")
    loopback = _is_loopback(host)
    hosts = tuple(allowed_host or ()) or ((*LOOPBACK_NAMES, host) if loopback else ())
    settings = Settings(workspace=root.resolve(), api_key_file=api_key_file.resolve() if api_key_file else None,
                        keys_file=keys_file.resolve() if keys_file else None, allow_writes=allow_writes,
                        max_bulk_edit=max_bulk_edit,
                        cors_origins=tuple(cors_origin or ()), allow_urls=allow_urls,
                        allow_private_urls=allow_private_urls, max_request_bytes=int(max_upload_mb * 1024 * 1024),
                        max_pixels=max_pixels, max_request_pixels=4 * max_pixels, max_images=max_images,
                        max_batch=max_images, preload=not lazy,
                        compute_slots=compute_slots, allowed_hosts=hosts, body_timeout=body_timeout,
                        max_auth_failures=max_auth_failures)
    # A missing or empty key file fails here, with its name, not in every worker.
    keys = settings.keyring()
    if keys is not None and allow_writes:
        raise BadInput("--allow-writes is for a server without keys; with keys, give the write scope to the keys "
                       "that may edit")
    if keys is None and not loopback:
        err.print(f"[bold yellow]warning:[/] serving on {host}, reachable from other machines, with no API key: "
                  "anyone who can reach it can read the collection and use its models; set --api-key-file or "
                  "CURATA_API_KEY", soft_wrap=True)
    # Workers are separate processes: they rebuild the settings from the environment (no key in it).
    os.environ[ENV_SETTINGS] = settings.to_json()
    console.print(f"curata serving {workspace} on http://{host}:{port}/ (API docs at /docs)", soft_wrap=True)
    uvicorn.run("curata.service.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, proxy_headers=False, server_header=False,
                http="curata.service.protocol:JsonErrorHttpToolsProtocol")


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.strip().lower() == "localhost"
