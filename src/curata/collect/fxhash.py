"""fxhash: generative tokens (projects) and their iterations, from the public GraphQL API.

Two kinds of request, both POSTs of a GraphQL query (only the fields we use):

* ``generativeTokens(filters, sort, take, skip)``: the projects, by id (``filters.id_in``) or by a
  search (``filters.searchQuery_eq``), paged with take/skip;
* ``generativeToken(id) { objkts(take, skip, sort) }``: one project's iterations, paged likewise.

Every iteration becomes one record: collection and label = the project's name, tags = the project's
tags plus the iteration's features as ``trait=value``, text = iteration name + description, an
NFT1000 caption, and its display image (an ``ipfs://`` URI the pipeline downloads through the
configured gateways). Projects are fetched concurrently; pages of one project in order, each page
recorded in the journal as it arrives.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from curata.ingest.nft import attribute_tags, nft1000_caption, normalise_attributes, trait_value
from curata.ingest.records import RawRecord, clean_text
from curata.progress import SILENT, Reporter
from curata.workspace import Workspace

from .base import (
    CollectOptions,
    CollectReport,
    DownloadError,
    MetadataSession,
    finish,
    open_journal,
    run_concurrently,
)

DEFAULT_ENDPOINT = "https://api.fxhash.xyz/graphql"

PROJECTS_QUERY = """
query Projects($filters: GenerativeTokenFilter, $sort: GenerativeSortInput, $take: Int, $skip: Int) {
  generativeTokens(filters: $filters, sort: $sort, take: $take, skip: $skip) {
    id
    name
    slug
    tags
    metadata
    supply
    objktsCount
    author { id name }
  }
}
""".strip()

ITERATIONS_QUERY = """
query Iterations($id: Float, $take: Int, $skip: Int, $sort: ObjktsSortInput) {
  generativeToken(id: $id) {
    id
    objkts(take: $take, skip: $skip, sort: $sort) {
      id
      iteration
      name
      slug
      metadata
      features
      displayUri
      thumbnailUri
    }
  }
}
""".strip()


@dataclass(frozen=True)
class FxhashQuery:
    """Which projects and how many iterations of each. ``tokens`` wins over ``search``."""

    endpoint: str = DEFAULT_ENDPOINT
    tokens: tuple[int, ...] = ()
    search: str | None = None
    limit_projects: int = 10
    iterations_per_project: int = 50
    page_size: int = 50  # take of each request (the public API caps it at 50)
    image: str = "display"  # "display" or "thumbnail"

    def __post_init__(self) -> None:
        if self.limit_projects < 1 or self.iterations_per_project < 1 or self.page_size < 1:
            raise ValueError("limit_projects, iterations_per_project and page_size must be at least 1")
        if self.image not in ("display", "thumbnail"):
            raise ValueError(f"image must be 'display' or 'thumbnail', not {self.image!r}")


class GraphQLError(Exception):
    pass


def _graphql(session: MetadataSession, endpoint: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    """``data`` of a GraphQL answer; errors (HTTP, transport, or GraphQL ``errors``) raise with the reason."""
    answer = session.get_json(endpoint, body={"query": query, "variables": variables})
    if not isinstance(answer, dict):
        raise GraphQLError(f"GraphQL answer is not an object (got {type(answer).__name__})")
    errors = answer.get("errors")
    if errors:
        messages = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)
        raise GraphQLError(f"GraphQL error: {messages[:500]}")
    data = answer.get("data")
    if not isinstance(data, dict):
        raise GraphQLError("GraphQL answer has no data")
    return data


def _objkt_id(value: Any) -> str:
    """An iteration's id as text: a number, a string, or the newer ``{id, issuer}`` object."""
    if isinstance(value, dict):
        return "-".join(str(v) for v in value.values())
    return str(value)


def _features(objkt: dict[str, Any]) -> list[dict[str, Any]]:
    """The iteration's features as ``{trait_type, value}``: ``features``, else ``metadata.attributes``."""
    metadata = objkt.get("metadata") if isinstance(objkt.get("metadata"), dict) else {}
    raw = objkt.get("features") or metadata.get("attributes") or metadata.get("features") or []
    if isinstance(raw, list):  # fxhash spells the trait "name"; ERC-721 "trait_type"
        raw = [{"trait_type": e.get("name", e.get("trait_type", "")), "value": e.get("value")}
               if isinstance(e, dict) else e for e in raw]
    return normalise_attributes({"attributes": raw})


def iteration_record(project: dict[str, Any], objkt: dict[str, Any], image: str = "display") -> RawRecord:
    """One iteration (gentk) of a project as a record, or a record with the reason it cannot be one."""
    local_id = _objkt_id(objkt.get("id"))
    record = RawRecord(ref=f"fxhash gentk {local_id}", local_id=local_id)
    project_name = clean_text(project.get("name")) or f"generative token {project.get('id')}"
    metadata = objkt.get("metadata") if isinstance(objkt.get("metadata"), dict) else {}
    project_meta = project.get("metadata") if isinstance(project.get("metadata"), dict) else {}
    name = clean_text(objkt.get("name") or metadata.get("name")) or f"{project_name} #{objkt.get('iteration', '?')}"
    description = clean_text(metadata.get("description") or project_meta.get("description"))
    try:
        attributes = _features(objkt)
    except ValueError as e:
        record.error = ("malformed_json", f"features: {e}")
        return record
    order = ("thumbnailUri", "displayUri") if image == "thumbnail" else ("displayUri", "thumbnailUri")
    uri = next((clean_text(src.get(key)) for key in order for src in (objkt, metadata) if clean_text(src.get(key))), "")
    if uri.startswith(("ipfs://", "http://", "https://")):
        record.image = uri
    else:
        record.error = ("missing_image", f"no display image URI for {name} ({uri[:100] or 'none'})")
    project_tags = [t for t in (clean_text(t) for t in project.get("tags") or []) if t]
    author = project.get("author") if isinstance(project.get("author"), dict) else {}
    record.collection = project_name
    record.label = project_name
    record.attributes = attributes
    record.tags = list(dict.fromkeys([*project_tags, *attribute_tags(attributes)]))
    record.text = ". ".join(p for p in (name, description) if p)
    record.captions = [nft1000_caption(name, attributes)]
    record.meta = {
        "name": name,
        "image_uri": uri,
        "generative_token_id": project.get("id"),
        "generative_token_slug": project.get("slug"),
        "author_id": author.get("id"),
        "author_name": author.get("name"),
        "iteration": objkt.get("iteration"),
        "slug": objkt.get("slug"),
        "features": {a["trait_type"]: trait_value(a["value"]) for a in attributes if a["trait_type"]},
    }
    return record


class _State:
    """Progress rebuilt from the journal: the projects, and each project's iteration pages."""

    def __init__(self, events: Sequence[dict[str, Any]]):
        self.projects: list[dict[str, Any]] = []
        self.projects_next = 0
        self.projects_done = False
        self.next_skip: dict[str, int] = {}
        self.done: set[str] = set()
        self.objkts: dict[str, list[dict[str, Any]]] = {}  # iterations as served, by project id
        self.pages = 0
        for event in events:
            self.pages += 1
            if event.get("t") == "projects":
                self.projects.extend(event.get("projects", []))
                self.projects_next = int(event.get("next", 0))
                self.projects_done = bool(event.get("end"))
            elif event.get("t") == "iterations":
                pid = str(event.get("project"))
                self.objkts.setdefault(pid, []).extend(event.get("objkts", []))
                self.next_skip[pid] = int(event.get("next", 0))
                if event.get("end"):
                    self.done.add(pid)

    def n_objkts(self) -> int:
        return sum(len(r) for r in self.objkts.values())


def collect_fxhash(
    workspace: Workspace,
    query: FxhashQuery = FxhashQuery(),
    options: CollectOptions | None = None,
    reporter: Reporter = SILENT,
) -> CollectReport:
    """Collect fxhash projects and iterations into the workspace; resumable (see the module doc)."""
    options = options or CollectOptions()
    # The journal keeps the API's answers, not our records, so --image applies to a resumed run too.
    fingerprint = {"collector": "fxhash", **{k: v for k, v in asdict(query).items() if k != "image"}}
    journal = open_journal(workspace, "fxhash", fingerprint)
    report = CollectReport("fxhash", query.endpoint, str(journal.path))
    with journal, MetadataSession(options) as session:
        state = _State(journal.open(options.refresh))
        report.resumed = state.pages > 0
        report.reused = state.pages
        if not state.projects_done:
            _fetch_projects(session, journal, state, query, report, reporter)
        _fetch_iterations(session, journal, state, query, options, report, reporter)
        report.requests = session.requests
    projects = state.projects[: query.limit_projects]
    report.complete = state.projects_done and all(str(p.get("id")) in state.done for p in projects)
    records = [iteration_record(p, o, query.image) for p in projects for o in state.objkts.get(str(p.get("id")), [])]
    return finish(report, records, workspace, options, reporter, default_source="fxhash")


def _fetch_projects(session: MetadataSession, journal: Any, state: _State, query: FxhashQuery,
                    report: CollectReport, reporter: Reporter) -> None:
    advance = reporter.task("fxhash projects", None if query.tokens else query.limit_projects)
    if query.tokens:
        variables = {"filters": {"id_in": list(query.tokens)}, "take": len(query.tokens), "skip": 0}
        try:
            found = _graphql(session, query.endpoint, PROJECTS_QUERY, variables).get("generativeTokens") or []
        except (DownloadError, GraphQLError) as e:
            report.fail("fxhash projects " + ",".join(map(str, query.tokens)), getattr(e, "reason", str(e)))
            return
        by_id = {str(p.get("id")): p for p in found if isinstance(p, dict)}
        for token in query.tokens:
            if str(token) not in by_id:
                report.fail(f"fxhash generative token {token}", "not found")
        projects = [by_id[str(t)] for t in query.tokens if str(t) in by_id]
        journal.append({"t": "projects", "projects": projects, "next": len(query.tokens), "end": True})
        state.projects, state.projects_done = projects, True
        report.fetched += 1
        advance(len(projects))
        return
    filters = {"searchQuery_eq": query.search} if query.search else {}
    sort = {"relevance": "DESC"} if query.search else {"id": "DESC"}
    while len(state.projects) < query.limit_projects:
        skip = state.projects_next
        take = min(query.page_size, query.limit_projects - len(state.projects))
        variables = {"filters": filters, "sort": sort, "take": take, "skip": skip}
        try:
            page = _graphql(session, query.endpoint, PROJECTS_QUERY, variables).get("generativeTokens")
        except (DownloadError, GraphQLError) as e:
            report.fail(f"fxhash projects skip={skip}", getattr(e, "reason", str(e)))
            return
        page = [p for p in page or [] if isinstance(p, dict)]
        end = len(page) < take or len(state.projects) + len(page) >= query.limit_projects
        journal.append({"t": "projects", "projects": page, "next": skip + len(page), "end": end})
        state.projects.extend(page)
        state.projects_next = skip + len(page)
        state.projects_done = end
        report.fetched += 1
        advance(len(page))
        if end:
            return


def _fetch_iterations(session: MetadataSession, journal: Any, state: _State, query: FxhashQuery,
                      options: CollectOptions, report: CollectReport, reporter: Reporter) -> None:
    projects = [p for p in state.projects[: query.limit_projects] if str(p.get("id")) not in state.done]
    wanted = query.iterations_per_project * len(state.projects[: query.limit_projects])
    if options.max_items is not None:
        wanted = min(wanted, options.max_items)
    advance = reporter.task("fxhash iterations", wanted)
    advance(min(state.n_objkts(), wanted))
    lock = threading.Lock()
    collected = [state.n_objkts()]

    def enough() -> bool:
        with lock:
            return options.max_items is not None and collected[0] >= options.max_items

    def one_project(project: dict[str, Any], stop: threading.Event) -> None:
        pid = str(project.get("id"))
        skip = state.next_skip.get(pid, 0)
        while skip < query.iterations_per_project and not enough() and not stop.is_set():
            take = min(query.page_size, query.iterations_per_project - skip)
            variables = {"id": project.get("id"), "take": take, "skip": skip, "sort": {"iteration": "ASC"}}
            try:
                data = _graphql(session, query.endpoint, ITERATIONS_QUERY, variables)
            except (DownloadError, GraphQLError) as e:
                report.fail(f"fxhash generative token {pid} iterations skip={skip}", getattr(e, "reason", str(e)))
                return
            token = data.get("generativeToken")
            if not isinstance(token, dict):
                report.fail(f"fxhash generative token {pid}", "not found")
                return
            objkts = [o for o in token.get("objkts") or [] if isinstance(o, dict)]
            end = len(objkts) < take or skip + len(objkts) >= query.iterations_per_project
            journal.append({"t": "iterations", "project": pid, "skip": skip, "next": skip + len(objkts),
                            "end": end, "objkts": objkts})
            with lock:
                state.objkts.setdefault(pid, []).extend(objkts)
                state.next_skip[pid] = skip + len(objkts)
                if end:
                    state.done.add(pid)
                report.fetched += 1
                collected[0] += len(objkts)
            advance(len(objkts))
            if end:
                return
            skip += len(objkts)

    run_concurrently(one_project, projects, options.concurrency)
