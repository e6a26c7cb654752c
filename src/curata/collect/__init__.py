"""Collectors: gather items from public NFT, art and product APIs into a workspace.

* `fxhash` — generative tokens (projects) and their iterations from the fxhash GraphQL API;
* `erc721` — token metadata JSON by URI (http(s), ipfs://, data:), images included;
* `api` — any paginated JSON API, described by a declarative spec file.

Each collector journals its progress in ``<workspace>/cache/collect/`` (a rerun resumes without
refetching), then hands its records to the ingest pipeline, so ids, verification and the report
are those of `curata ingest`. Network behaviour (retries, backoff with jitter, Retry-After,
timeouts, size caps, content checks, IPFS gateway fallback) is the downloader's
(`curata.ingest.download`).
"""

from curata.collect.api import ApiSpec, collect_api, load_spec
from curata.collect.base import CollectOptions, CollectReport
from curata.collect.erc721 import collect_erc721, expand_range, read_uri_file
from curata.collect.fxhash import DEFAULT_ENDPOINT, FxhashQuery, collect_fxhash

__all__ = [
    "DEFAULT_ENDPOINT",
    "ApiSpec",
    "CollectOptions",
    "CollectReport",
    "FxhashQuery",
    "collect_api",
    "collect_erc721",
    "collect_fxhash",
    "expand_range",
    "load_spec",
    "read_uri_file",
]
