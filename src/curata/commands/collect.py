"""`curata collect fxhash | erc721 | api`: gather items from public APIs into the workspace.

Thin wrappers over `curata.collect`; every collector resumes from its checkpoint in
``<workspace>/cache/collect/`` and ends in the ingest pipeline, so its report is an ingest report.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from curata.clibase import (
    EXIT_BAD_INPUT,
    BadInput,
    JsonOpt,
    QuietOpt,
    WorkspaceOpt,
    app,
    console,
    emit_json,
    handle_errors,
)
from curata.commands.ingest import print_ingest_report
from curata.progress import rich_reporter
from curata.workspace import Workspace, default_workspace

if TYPE_CHECKING:
    from curata.collect import CollectOptions, CollectReport

# The collectors (and through them httpx and the ingest pipeline) are imported when a collect command runs,
# not by every `curata` command; the endpoint is spelled out for the option's default
# (tests/test_search_speed_zeroshot.py checks it is curata.collect.fxhash.DEFAULT_ENDPOINT).
DEFAULT_ENDPOINT = "https://api.fxhash.xyz/graphql"

collect_app = typer.Typer(
    name="collect",
    help="Collect items from public NFT, art and product APIs (fxhash, ERC-721 token URIs, any paginated JSON "
         "API). Interrupted runs resume from a checkpoint in <workspace>/cache/collect/ without refetching; "
         "items land through the ingest pipeline (ids <source>/<local id>, every image verified).",
    no_args_is_help=True,
)
app.add_typer(collect_app, name="collect")

MaxItemsOpt = Annotated[int | None, typer.Option(help="Stop once this many items are gathered; a rerun with a "
                                                      "larger value continues where this one stopped.")]
ConcurrencyOpt = Annotated[int, typer.Option(help="Metadata requests in flight (API pages of different projects, "
                                                  "token documents).")]
DownloadsOpt = Annotated[int, typer.Option(help="Concurrent image downloads.")]
RetriesOpt = Annotated[int, typer.Option(help="Extra attempts per request on timeouts, 429, 5xx and truncated "
                                              "bodies (exponential backoff with jitter; Retry-After honoured).")]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds allowed to connect and for each read.")]
MaxBytesOpt = Annotated[int, typer.Option(help="Size cap of one image file, in bytes.")]
GatewayOpt = Annotated[list[str] | None, typer.Option("--ipfs-gateway", help="IPFS gateway URL prefix, repeatable; "
                                                      "tried in order (default https://ipfs.io/ipfs/).")]
SourceNameOpt = Annotated[str | None, typer.Option(help="Prefix of item ids (<source>/<local id>).")]
CollectionOpt = Annotated[str | None, typer.Option(help="Collection name for every item (default: per item).")]
RefreshOpt = Annotated[bool, typer.Option(help="Ignore the checkpoint and fetch all metadata again (images "
                                               "already downloaded stay cached).")]
StrictOpt = Annotated[bool, typer.Option(help="Exit with code 2 when a request failed or an item was rejected.")]


def _options(max_items: int | None, concurrency: int, downloads: int, retries: int, timeout: float,
             max_bytes: int, ipfs_gateway: list[str] | None, source_name: str | None, collection: str | None,
             refresh: bool) -> CollectOptions:
    from curata.collect import CollectOptions
    from curata.ingest.download import DownloadPolicy

    policy = DownloadPolicy(concurrency=downloads, retries=retries, timeout=timeout, max_bytes=max_bytes)
    if ipfs_gateway:
        policy = DownloadPolicy(concurrency=downloads, retries=retries, timeout=timeout, max_bytes=max_bytes,
                                ipfs_gateways=tuple(ipfs_gateway))
    return CollectOptions(download=policy, concurrency=concurrency, max_items=max_items, source_name=source_name,
                          collection=collection, refresh=refresh)


def _show(report: CollectReport, as_json: bool, strict: bool) -> None:
    if as_json:
        emit_json(report.to_dict())
    else:
        s = report.summary()
        state = "complete" if report.complete else "[yellow]incomplete: rerun to resume[/]"
        console.print(
            f"[bold]{report.collector}[/] {escape(report.source)}: {report.fetched} fetched, {report.reused} "
            f"from the checkpoint ({'resumed' if report.resumed else 'new'}), {report.requests} requests, "
            f"{report.records} records; {state}"
        )
        for reason, n in list(s["skipped"].items())[:10]:
            console.print(f"  [dim]skipped[/] {n} x {escape(reason)}")
        if report.failures:
            table = Table(title=f"Failed requests ({len(report.failures)})")
            table.add_column("what", overflow="fold")
            table.add_column("reason", overflow="fold")
            for failure in report.failures[:30]:
                table.add_row(escape(failure["ref"]), escape(failure["reason"]))
            console.print(table)
        if report.ingest is not None:
            print_ingest_report(report.ingest)
    if strict and (report.failures or (report.ingest and report.ingest.errors)):
        raise typer.Exit(EXIT_BAD_INPUT)


@collect_app.command("fxhash")
@handle_errors
def fxhash_cmd(
    token: Annotated[list[int] | None, typer.Option("--token", "-t", help="Generative token (project) id, "
                                                    "repeatable. Without it, projects come from --search or "
                                                    "the newest ones.")] = None,
    search: Annotated[str | None, typer.Option(help="Full-text search of projects (fxhash searchQuery).")] = None,
    limit_projects: Annotated[int, typer.Option(help="How many projects to take from the search / listing.")] = 10,
    iterations_per_project: Annotated[int, typer.Option(help="Iterations (gentks) to take per project, "
                                                              "lowest iteration numbers first.")] = 50,
    page_size: Annotated[int, typer.Option(help="take of each GraphQL request (the API allows at most 50).")] = 50,
    image: Annotated[str, typer.Option(help="Which image of an iteration: display or thumbnail.")] = "display",
    endpoint: Annotated[str, typer.Option(help="GraphQL endpoint.")] = DEFAULT_ENDPOINT,
    workspace: WorkspaceOpt = default_workspace(),
    max_items: MaxItemsOpt = None,
    concurrency: ConcurrencyOpt = 4,
    downloads: DownloadsOpt = 8,
    retries: RetriesOpt = 3,
    timeout: TimeoutOpt = 20.0,
    max_bytes: MaxBytesOpt = 50 * 1024 * 1024,
    ipfs_gateway: GatewayOpt = None,
    source_name: SourceNameOpt = None,
    collection: CollectionOpt = None,
    refresh: RefreshOpt = False,
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Collect fxhash generative tokens and their iterations (GraphQL API, paged with take/skip).

    Each iteration becomes an item: collection and label = the project's name, tags = the project's
    tags plus the iteration's features as trait=value, text = name + description, image = its
    display image (ipfs://, fetched through the gateways). Ids are fxhash/<gentk id>.
    """
    from curata.collect import FxhashQuery, collect_fxhash

    query = FxhashQuery(endpoint=endpoint, tokens=tuple(token or ()), search=search, limit_projects=limit_projects,
                        iterations_per_project=iterations_per_project, page_size=page_size, image=image)
    options = _options(max_items, concurrency, downloads, retries, timeout, max_bytes, ipfs_gateway, source_name,
                       collection, refresh)
    with rich_reporter(not quiet and not as_json) as reporter:
        report = collect_fxhash(Workspace(workspace), query, options, reporter)
    _show(report, as_json, strict)


@collect_app.command("erc721")
@handle_errors
def erc721_cmd(
    uris: Annotated[list[str] | None, typer.Argument(help="Token URIs (http(s)://, ipfs://, data:application/json).",
                                                     show_default=False)] = None,
    from_file: Annotated[Path | None, typer.Option("--from-file", "-f", help="Text file of token URIs, one a line "
                                                   "(# comments allowed).")] = None,
    uri_template: Annotated[str | None, typer.Option(help="Token URI with an {id} placeholder, e.g. "
                                                     "ipfs://CID/{id}; use with --ids.")] = None,
    ids: Annotated[str | None, typer.Option(help="Token ids for --uri-template: N, N-M, or a comma list.")] = None,
    label_trait: Annotated[str | None, typer.Option(help="Use this trait's value as the item label.")] = None,
    workspace: WorkspaceOpt = default_workspace(),
    max_items: MaxItemsOpt = None,
    concurrency: ConcurrencyOpt = 8,
    downloads: DownloadsOpt = 8,
    retries: RetriesOpt = 3,
    timeout: TimeoutOpt = 20.0,
    max_bytes: MaxBytesOpt = 50 * 1024 * 1024,
    ipfs_gateway: GatewayOpt = None,
    source_name: SourceNameOpt = None,
    collection: CollectionOpt = None,
    refresh: RefreshOpt = False,
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Collect ERC-721 tokens: fetch each token's metadata JSON, then its image.

    Items are built like `curata ingest` builds a local NFT metadata folder: tags trait=value, an
    NFT1000 caption, text = name + description. Ids are <source>/<token id from the URI>
    (default source name: erc721; give each collection its own --source-name).
    """
    from curata.collect import collect_erc721, expand_range, read_uri_file

    all_uris = list(uris or [])
    if from_file is not None:
        all_uris += read_uri_file(from_file)
    if (uri_template is None) != (ids is None):
        raise BadInput("--uri-template and --ids go together")
    if uri_template is not None and ids is not None:
        all_uris += expand_range(uri_template, ids)
    if not all_uris:
        raise BadInput("no token URIs: pass them as arguments, with --from-file, or with --uri-template/--ids")
    options = _options(max_items, concurrency, downloads, retries, timeout, max_bytes, ipfs_gateway, source_name,
                       collection, refresh)
    source = str(from_file) if from_file is not None else (uri_template or f"{len(all_uris)} token URIs")
    with rich_reporter(not quiet and not as_json) as reporter:
        report = collect_erc721(Workspace(workspace), all_uris, options, reporter, label_trait=label_trait,
                                source=source)
    _show(report, as_json, strict)


@collect_app.command("api")
@handle_errors
def api_cmd(
    spec_file: Annotated[Path, typer.Argument(help="Spec file (.json or .toml): URL template, pagination, items "
                                                   "path, field mapping, filters, limit. See the README.")],
    limit: Annotated[int | None, typer.Option(help="Keep the first N items that pass the filters (overrides "
                                                   "the spec's limit).")] = None,
    workspace: WorkspaceOpt = default_workspace(),
    max_items: MaxItemsOpt = None,
    concurrency: Annotated[int, typer.Option(help="Concurrent image downloads (pages are fetched one after "
                                                  "another: cursors and next links are sequential).")] = 8,
    retries: RetriesOpt = 3,
    timeout: TimeoutOpt = 20.0,
    max_bytes: MaxBytesOpt = 50 * 1024 * 1024,
    ipfs_gateway: GatewayOpt = None,
    source_name: SourceNameOpt = None,
    collection: CollectionOpt = None,
    refresh: RefreshOpt = False,
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Collect items from a paginated JSON API described by a spec file.

    Pages are fetched in order until `limit` items pass the filters or the API has no more pages;
    ids are <spec name>/<mapped id> (or a hash of the image URL when no id is mapped).
    """
    from curata.collect import collect_api, load_spec

    spec = load_spec(spec_file)
    if limit is not None:
        if limit < 1:
            raise BadInput("--limit must be at least 1")
        spec = replace(spec, limit=limit)
    options = _options(max_items, 1, concurrency, retries, timeout, max_bytes, ipfs_gateway, source_name,
                       collection, refresh)
    with rich_reporter(not quiet and not as_json) as reporter:
        report = collect_api(Workspace(workspace), spec, options, reporter, source=str(spec_file))
    _show(report, as_json, strict)
