"""Who may call the service and what they may do: named API keys with scopes.

A keys file (`curata serve --keys-file`) is JSON: `{"keys": [{"name": "ana", "key": "...", "scopes": ["read",
"write"]}, ...]}`. The single key of `--api-key-file` / $CURATA_API_KEY is the key "admin" with both scopes.
The name is what the edit log records as the editor; the key itself is never logged or returned. Without any
key the service answers as "anonymous", read-only unless started with `--allow-writes`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path

SCOPES = ("read", "write")
MIN_KEY_CHARS = 16  # for keys in a keys file: a short shared secret is guessed by the 30-per-minute limit's budget


@dataclass(frozen=True)
class ApiKey:
    name: str
    key: str
    scopes: frozenset[str]

    @property
    def can_write(self) -> bool:
        return "write" in self.scopes


def session_token(key: str) -> str:
    """What the session cookie holds: derived from the key, so the cookie never carries the key itself."""
    return hmac.new(key.encode(), b"curata-session-v1", hashlib.sha256).hexdigest()


def anonymous(allow_writes: bool) -> ApiKey:
    return ApiKey("anonymous", "", frozenset(SCOPES if allow_writes else ("read",)))


class KeyRing:
    """The keys a server accepts; every comparison runs in constant time over all of them."""

    def __init__(self, keys: list[ApiKey]):
        if not keys:
            raise ValueError("a key ring needs at least one key")
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            raise ValueError("two API keys share a name")
        if len({k.key for k in keys}) != len(keys):
            raise ValueError("two API keys are the same key")
        self.keys = keys
        self._sessions = [(session_token(k.key), k) for k in keys]

    def match(self, given: str) -> ApiKey | None:
        found = None
        for k in self.keys:  # no early exit: the time taken does not tell which key came close
            if hmac.compare_digest(given.encode(), k.key.encode()):
                found = k
        return found

    def by_session(self, token: str) -> ApiKey | None:
        found = None
        for expected, k in self._sessions:
            if hmac.compare_digest(token.encode(), expected.encode()):
                found = k
        return found

    @classmethod
    def from_file(cls, path: Path) -> KeyRing:
        """Keys from a JSON keys file; every problem is one line naming the file (never a key's value)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ValueError(f"cannot read the keys file {path}: {e.strerror or e}") from e
        except ValueError as e:
            raise ValueError(f"the keys file {path} is not JSON ({e.__class__.__name__})") from e
        entries = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not entries:
            raise ValueError(f'the keys file {path} needs {{"keys": [{{"name", "key", "scopes"}}, ...]}}')
        keys = []
        for n, entry in enumerate(entries, 1):
            if not isinstance(entry, dict):
                raise ValueError(f"the keys file {path}: entry {n} is not an object")
            name, key, scopes = entry.get("name"), entry.get("key"), entry.get("scopes", ["read"])
            if not isinstance(name, str) or not name.strip() or len(name) > 64:
                raise ValueError(f"the keys file {path}: entry {n} needs a name (1-64 characters)")
            if not isinstance(key, str) or len(key.strip()) < MIN_KEY_CHARS:
                raise ValueError(f"the keys file {path}: the key of {name!r} needs at least {MIN_KEY_CHARS} "
                                 "characters")
            if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
                raise ValueError(f"the keys file {path}: the scopes of {name!r} must be a list of "
                                 f"{' and '.join(SCOPES)}")
            keys.append(ApiKey(name.strip(), key.strip(), frozenset(scopes)))
        try:
            return cls(keys)
        except ValueError as e:
            raise ValueError(f"the keys file {path}: {e}") from e
