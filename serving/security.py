"""Who may call the HTTP API, how much, and how fast: API keys with scopes, request limits, rate limits.

Keys
    A key looks like ``rfk_<id>_<secret>`` (id: 8 hex characters, shown by ``recfeast keys list``;
    secret: 32 random bytes, URL-safe base64). Clients send it as ``X-API-Key: <key>`` or
    ``Authorization: Bearer <key>``. The keys file (JSON, mode 0600, written atomically by
    ``recfeast keys create|revoke``) holds, per key, its id, name, scopes, creation/revocation time
    and ``HMAC-SHA256(file salt, key)``: never the key itself. A key's 256-bit secret makes a slow
    password hash unnecessary; the per-file random salt keeps hashes from matching across files.
    Keys can also come from ``$RECFEAST_API_KEYS`` (``KEY=read+write,KEY2=read``; a key without
    ``=`` gets ``read``), hashed on load with a salt of the process. Keys are never logged or echoed.

Scopes
    ``read``: ``/features``, ``/recommend``, ``/search``. ``write``: ``/events``. ``metrics``:
    ``/metrics``. ``admin``: ``/admin/reload``. ``/health``, ``/docs`` and ``/openapi.json`` are
    open (health carries no secret; it is rate-limited per client address).

Limits (:class:`ApiSettings`, environment ``RECFEAST_API_*`` or ``recfeast serve`` options)
    request body bytes (413 before the body is read), items per ``/features`` call (fewer with
    vectors), and a token bucket per key (per client address for open endpoints and anonymous
    mode): 429 with ``Retry-After``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from recfeast.errors import ConfigError

SCOPES = ("read", "write", "metrics", "admin")
#: the scope each guarded path needs; paths not listed are open (health, docs) or unknown (404)
PATH_SCOPES = {"/features": "read", "/recommend": "read", "/search": "read", "/events": "write",
               "/metrics": "metrics", "/admin/reload": "admin"}
OPEN_PATHS = ("/health",)   #: open, but rate-limited per client address
KEY_PREFIX = "rfk_"


class ApiSettings(BaseSettings):
    """Security settings of the HTTP API; each can be set as ``RECFEAST_API_<NAME>`` (upper case) or
    passed to :func:`recfeast.serving.api.create_app` / ``recfeast serve``.

    Attributes:
        keys_file: keys file written by ``recfeast keys`` (None: only ``keys``).
        keys: plain keys with scopes, ``KEY=read+write,KEY2=read`` (from the environment).
        allow_anonymous: serve requests without a key (local development only); they get
            ``anonymous_scopes`` and are rate-limited per client address.
        max_body_bytes: largest request body (413 above; checked before the body is read).
        max_items: item ids per ``/features`` call without vectors.
        max_items_vectors: item ids per ``/features`` call with ``"vectors": true``.
        rate_per_s / burst: token bucket per key (and per client address): sustained requests per
            second and the burst allowed above it (0 rate: no limit).
        health_max_lag_s: see :class:`recfeast.serving.service.ServiceConfig`.
        compute_threads: requests of ``/recommend``, ``/search`` and ``/features`` computed at once
            in one process (the others, ``/health`` and ``/metrics``, run beside them). Their work
            holds Python's GIL but for one store round trip, so extra threads mostly add switching:
            on 2 cores one thread served 276 requests/s at 3.5 ms of CPU each, four 221 at 5.1 ms
            (BENCHMARKS.md). Raise it when the store is slow to answer; run more processes for more
            cores.
    """

    model_config = SettingsConfigDict(env_prefix="RECFEAST_API_", extra="ignore")

    keys_file: Path | None = None
    keys: str | None = Field(default=None, repr=False)
    allow_anonymous: bool = False
    anonymous_scopes: tuple[str, ...] = ("read", "write", "metrics")
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_items: int = Field(default=1000, ge=1, le=1000)
    max_items_vectors: int = Field(default=100, ge=1, le=1000)
    rate_per_s: float = Field(default=50.0, ge=0)
    burst: int = Field(default=100, ge=1)
    compute_threads: int = Field(default=1, ge=1, le=64)


@dataclass(frozen=True)
class Principal:
    """Who made a request: key id (``"anonymous"`` without a key), name and scopes."""

    key_id: str
    name: str
    scopes: frozenset


def _hash(salt: bytes, key: str) -> str:
    return hmac.new(salt, key.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------- keys file
def read_keys_file(path: Path) -> dict:
    """The keys file's content ``{"version", "salt", "keys": [...]}`` (a new empty one when absent).

    Raises:
        ConfigError: unreadable or not a recfeast keys file.
    """
    path = Path(path)
    if not path.exists():
        return {"version": 1, "salt": secrets.token_hex(16), "keys": []}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"API keys file {path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list) or not isinstance(data.get("salt"), str):
        raise ConfigError(f"API keys file {path}: expected {{'version', 'salt', 'keys': [...]}} "
                          "as written by `recfeast keys create`")
    return data


def write_keys_file(path: Path, data: dict) -> None:
    """Write the keys file atomically (temporary file in the same folder, fsync, rename), mode 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_key(path: Path, scopes, name: str = "") -> tuple[str, dict]:
    """Add a new key to the keys file at ``path`` (created if needed).

    Returns:
        ``(key, entry)``: the key in clear (shown once, never stored) and its stored entry.

    Raises:
        ConfigError: an unknown scope or an unreadable file.
    """
    scopes = sorted(set(scopes))
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ConfigError(f"scopes {bad or scopes}: expected one or more of {', '.join(SCOPES)}")
    data = read_keys_file(path)
    taken = {k.get("id") for k in data["keys"]}
    kid = secrets.token_hex(4)
    while kid in taken:
        kid = secrets.token_hex(4)
    key = f"{KEY_PREFIX}{kid}_{base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip('=')}"
    entry = {"id": kid, "name": name, "scopes": scopes, "hash": _hash(bytes.fromhex(data["salt"]), key),
             "created_at": _now(), "revoked_at": None}
    data["keys"].append(entry)
    write_keys_file(path, data)
    return key, entry


def revoke_key(path: Path, key_id: str) -> dict:
    """Mark key ``key_id`` revoked (kept in the file for the record). Returns its entry.

    Raises:
        ConfigError: no such key in the file.
    """
    data = read_keys_file(path)
    for entry in data["keys"]:
        if entry.get("id") == key_id:
            entry["revoked_at"] = entry.get("revoked_at") or _now()
            write_keys_file(path, data)
            return entry
    raise ConfigError(f"no key with id {key_id!r} in {path} (see `recfeast keys list`)")


class KeyStore:
    """The valid keys of a server: looks up a presented key by its HMAC.

    Args:
        keys_file: keys file (revoked entries are skipped), or None.
        env_keys: ``KEY=scope+scope,...`` (see the module doc), or None.

    Raises:
        ConfigError: unreadable keys file, malformed ``env_keys`` or an unknown scope.
    """

    def __init__(self, keys_file: Path | None = None, env_keys: str | None = None):
        self._by_hash: dict[tuple[str, str], Principal] = {}
        self.salts: list[bytes] = []
        if keys_file is not None:
            path = Path(keys_file)
            if not path.is_file():
                raise ConfigError(f"API keys file {path} does not exist: create a key with `recfeast keys create`")
            data = read_keys_file(path)
            salt = bytes.fromhex(data["salt"])
            self.salts.append(salt)
            for e in data["keys"]:
                if not e.get("revoked_at"):
                    self._by_hash[(salt.hex(), e["hash"])] = Principal(e["id"], e.get("name", ""), frozenset(e["scopes"]))
        if env_keys:
            salt = secrets.token_bytes(16)
            self.salts.append(salt)
            for n, part in enumerate(p.strip() for p in env_keys.split(",")):
                if not part:
                    continue
                key, _, scopes = part.partition("=")
                scopes = [s for s in (scopes or "read").split("+") if s]
                bad = [s for s in scopes if s not in SCOPES]
                if bad or len(key) < 16:
                    raise ConfigError(f"RECFEAST_API_KEYS entry {n + 1}: expected KEY=scope+scope with a key of at "
                                      f"least 16 characters and scopes from {', '.join(SCOPES)}")
                self._by_hash[(salt.hex(), _hash(salt, key))] = Principal(f"env{n + 1}", "environment", frozenset(scopes))

    def __len__(self) -> int:
        return len(self._by_hash)

    def lookup(self, key: str) -> Principal | None:
        """The principal of ``key``, None when unknown or revoked."""
        for salt in self.salts:
            p = self._by_hash.get((salt.hex(), _hash(salt, key)))
            if p is not None:
                return p
        return None


class RateLimiter:
    """Token buckets (``rate_per_s`` tokens per second, at most ``burst``), one per name, the
    ``max_names`` most recently used kept. Thread-safe."""

    def __init__(self, rate_per_s: float, burst: int, max_names: int = 100_000):
        self.rate, self.burst, self.max_names = rate_per_s, burst, max_names
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, name: str, now: float | None = None) -> float:
        """Take one token for ``name``: 0.0 when allowed, else the seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(name, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[name] = (tokens, now)
            while len(self._buckets) > self.max_names:
                self._buckets.popitem(last=False)
            return wait


def presented_key(headers: dict[str, str]) -> str | None:
    """The key a request carries (``X-API-Key`` or ``Authorization: Bearer``), None without one.

    Raises:
        ValueError: the credentials are unusable: an ``Authorization`` header that is not a bearer
            token, or two different keys in the two headers (never guessed which one counts).
    """
    key = headers.get("x-api-key")
    key = key.strip() if key is not None else None
    auth = headers.get("authorization")
    bearer = None
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ValueError("the Authorization header must be 'Bearer <API key>'")
        bearer = value.strip()
    if key is not None and bearer is not None and not hmac.compare_digest(key.encode("utf-8", "surrogatepass"),
                                                                          bearer.encode("utf-8", "surrogatepass")):
        raise ValueError("two different API keys in X-API-Key and Authorization: send one")
    return key or bearer or None


def retry_after(wait_s: float) -> str:
    """``Retry-After`` header value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(wait_s)))
