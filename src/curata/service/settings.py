"""Service settings: one frozen object built by `curata serve` (or from the environment) and shared by
every request. Limits live here so that they are enforced before any work is done."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from curata.service.keys import SCOPES, ApiKey, KeyRing
from curata.storage import location

ENV_SETTINGS = "CURATA_SERVICE_SETTINGS"  # JSON of Settings, how `curata serve` hands them to uvicorn workers
ENV_API_KEY = "CURATA_API_KEY"


@dataclass(frozen=True)
class Settings:
    workspace: Any = Path("curata-workspace")  # a folder, or a StorePath (curata.storage)
    # Authentication: a key read from `api_key_file`, else from $CURATA_API_KEY; None = no authentication.
    api_key_file: Path | None = None
    # Named keys with scopes (read, write), JSON (service/keys.py); used together with the single key above.
    keys_file: Path | None = None
    allow_writes: bool = False  # without any key: let anonymous clients edit (off: a keyless server only reads)
    max_bulk_edit: int = 100_000  # items one edit request may change
    cors_origins: tuple[str, ...] = ()  # none by default: browsers on other origins get no CORS headers
    allow_urls: bool = False  # fetch images from URLs given by clients (off: no server-side fetches)
    allow_private_urls: bool = False  # also from loopback / private addresses (tests, intranets)
    max_request_bytes: int = 20 * 1024 * 1024  # whole request body, checked before parsing
    max_pixels: int = 40_000_000  # per image (decompression-bomb guard), checked before decoding
    # All images of one request together, from their headers before decoding: 16 images under max_pixels
    # each took 77 s of CPU and 3.9 GB.
    max_request_pixels: int = 160_000_000
    max_images: int = 16  # images per request
    max_batch: int = 16  # images per model call inside a request
    url_timeout: float = 10.0  # for all the URL fetches of one request together
    url_fetch_slots: int = 8  # URL fetches at once per worker (threads of the shared pool they may hold)
    thumbnail_cache: int = 512  # thumbnails kept in memory
    preload: bool = True  # load every bundle and the search index at start-up (False: on first use)
    # Image requests computing at once in one worker process; the rest wait their turn. Their numpy
    # work holds the GIL, so threads computing together only fight over it: colour naming, 1 worker,
    # measured 108 req/s one at a time against 62 req/s with 16 at once. Scale with --workers instead.
    # (Text search is not bound: ONNX Runtime and FAISS release the GIL, and it ran 2x slower bound.)
    compute_slots: int = 1
    # Host names the server answers to (DNS-rebinding guard); empty: any. `curata serve` on a loopback
    # address allows only loopback names unless --allowed-host adds more.
    allowed_hosts: tuple[str, ...] = ()
    body_timeout: float = 60.0  # seconds for a whole request body to arrive (slow uploads are cut off)
    # Request bodies held in memory at once by one worker: past it, new uploads get 503 until others finish.
    max_inflight_bytes: int = 128 * 1024 * 1024
    max_json_values: int = 4096  # JSON values (objects, arrays, items) in one body, counted before parsing
    max_json_depth: int = 32  # nesting of a JSON body, checked before parsing
    max_auth_failures: int = 30  # wrong API keys from one client address per minute before 429

    def __post_init__(self) -> None:
        object.__setattr__(self, "workspace", location(self.workspace))
        if self.api_key_file is not None:
            object.__setattr__(self, "api_key_file", Path(self.api_key_file))
        if self.keys_file is not None:
            object.__setattr__(self, "keys_file", Path(self.keys_file))
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        object.__setattr__(self, "allowed_hosts", tuple(h.lower() for h in self.allowed_hosts))
        for name in ("max_request_bytes", "max_pixels", "max_request_pixels", "max_images", "max_batch",
                     "compute_slots", "max_inflight_bytes", "max_json_values", "url_fetch_slots",
                     "max_json_depth", "max_auth_failures", "max_bulk_edit"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.body_timeout <= 0:
            raise ValueError(f"body_timeout must be > 0, got {self.body_timeout}")

    def api_key(self) -> str | None:
        """The key clients must send, or None when authentication is off."""
        if self.api_key_file is not None:
            try:
                key = self.api_key_file.read_text(encoding="utf-8").strip()
            except OSError as e:
                raise ValueError(f"cannot read the API key file {self.api_key_file}: {e}") from e
            if not key:
                raise ValueError(f"the API key file {self.api_key_file} is empty")
            return key
        key = os.environ.get(ENV_API_KEY, "").strip()
        return key or None

    def keyring(self) -> KeyRing | None:
        """Every key the server accepts (the keys file's and the single key, named "admin", with both scopes),
        or None when authentication is off."""
        keys = KeyRing.from_file(self.keys_file).keys if self.keys_file is not None else []
        single = self.api_key()
        if single is not None:
            keys = [*keys, ApiKey("admin", single, frozenset(SCOPES))]
        return KeyRing(keys) if keys else None

    def to_json(self) -> str:
        data = asdict(self)
        data["workspace"] = str(self.workspace)
        data["api_key_file"] = str(self.api_key_file) if self.api_key_file else None
        data["keys_file"] = str(self.keys_file) if self.keys_file else None
        data["cors_origins"] = list(self.cors_origins)
        data["allowed_hosts"] = list(self.allowed_hosts)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Settings:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown service settings: {', '.join(sorted(unknown))}")
        return cls(**data)

    @classmethod
    def from_env(cls) -> Settings:
        """Settings from $CURATA_SERVICE_SETTINGS (JSON), else defaults with $CURATA_WORKSPACE."""
        text = os.environ.get(ENV_SETTINGS)
        if text:
            return cls.from_json(text)
        return cls(workspace=location(os.environ.get("CURATA_WORKSPACE", "curata-workspace")))
