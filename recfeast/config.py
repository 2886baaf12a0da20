"""Where recfeast finds things: data directory, feature repository, online store choice.

Environment variables (all optional):

| variable | meaning | default |
|---|---|---|
| ``RECFEAST_DATA_DIR`` | raw input directory for ``recfeast materialize`` | none: pass ``--data-dir`` |
| ``RECFEAST_REPO_PATH`` | the Feast feature repository (folder with ``feature_store.yaml``) | ``./feature_repo`` |
| ``RECFEAST_ONLINE_STORE`` | ``sqlite`` (embedded default) or ``redis`` | ``sqlite`` |
| ``RECFEAST_PROJECT`` | override ``project`` of ``feature_store.yaml`` | the yaml's value |
| ``RECFEAST_REGISTRY`` | Feast registry on PostgreSQL for several processes or machines: ``postgresql://user:password@host:5432/db`` | the yaml's file registry |
| ``REDIS_CONNECTION_STRING`` | Feast Redis connection string ``host:port[,db=N][,password=...][,ssl=true]``, or ``redis[s]://user:password@host:port/db`` | ``127.0.0.1:6379`` |
"""

from __future__ import annotations

import os
from pathlib import Path

from recfeast.errors import ConfigError

ONLINE_STORES = ("sqlite", "redis")
_SOURCE_REPO = Path(__file__).resolve().parents[1] / "feature_repo"


def data_dir(value: str | os.PathLike | None = None) -> Path:
    """Return the raw data directory: ``value``, else ``$RECFEAST_DATA_DIR``.

    Raises:
        ConfigError: neither is given, or the directory does not exist.
    """
    raw = value if value is not None else os.environ.get("RECFEAST_DATA_DIR")
    if not raw:
        raise ConfigError("no data directory: pass --data-dir DIR or set RECFEAST_DATA_DIR")
    path = Path(raw).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"data directory {path} does not exist or is not a directory")
    return path


def repo_path(value: str | os.PathLike | None = None) -> Path:
    """Return the feature repository folder (it holds ``feature_store.yaml``).

    Order: ``value``, ``$RECFEAST_REPO_PATH``, ``./feature_repo``, ``.`` when it holds a
    ``feature_store.yaml``, and last the ``feature_repo/`` of the source checkout.

    Raises:
        ConfigError: the chosen folder has no ``feature_store.yaml``.
    """
    raw = value if value is not None else os.environ.get("RECFEAST_REPO_PATH")
    if raw:
        candidates = [Path(raw)]
    else:
        candidates = [Path.cwd() / "feature_repo", Path.cwd(), _SOURCE_REPO]
    for cand in candidates:
        if (cand / "feature_store.yaml").is_file():
            return cand.expanduser().resolve()
    raise ConfigError(
        f"no feature_store.yaml in {', '.join(str(c) for c in candidates)}; "
        "pass --repo-path or set RECFEAST_REPO_PATH"
    )


def tables_dir(repo: Path) -> Path:
    """Folder of the Parquet feature tables of feature repository ``repo`` (``repo/data/tables``).

    ``feature_repo/feature_definitions.py`` builds its FileSource paths from the same rule.
    """
    return repo / "data" / "tables"


def online_store(value: str | None = None) -> str:
    """Return the online store kind: ``value``, else ``$RECFEAST_ONLINE_STORE``, else ``"sqlite"``.

    Raises:
        ConfigError: the value is not one of ``sqlite``, ``redis``.
    """
    kind = (value or os.environ.get("RECFEAST_ONLINE_STORE") or "sqlite").strip().lower()
    if kind not in ONLINE_STORES:
        raise ConfigError(f"RECFEAST_ONLINE_STORE={kind!r}: expected one of {', '.join(ONLINE_STORES)}")
    return kind


#: settings Feast's Redis store passes to redis-py (``host:port,key=value,...``): the ones recfeast checks
REDIS_SETTINGS = ("db", "password", "username", "ssl", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile",
                  "ssl_cert_reqs", "ssl_check_hostname", "socket_timeout", "socket_connect_timeout",
                  "skip_full_coverage_check", "health_check_interval", "client_name")
_TYPO = {"passwd": "password", "pwd": "password", "pass": "password", "user": "username", "tls": "ssl",
         "database": "db"}


def _redis_url_to_feast(url: str) -> str:
    """``redis://[user[:password]@]host[:port][/db][?key=value]`` (``rediss://``: TLS) -> Feast's form."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    from recfeast.redact import redact

    try:
        u = urlsplit(url)
        host, port = u.hostname, u.port or 6379
    except ValueError as exc:
        raise ConfigError(f"REDIS_CONNECTION_STRING={redact(url)!r}: not a valid URL ({redact(exc)})") from None
    if not host:
        raise ConfigError(f"REDIS_CONNECTION_STRING={redact(url)!r}: no host; expected "
                          "redis[s]://[user:password@]host:port[/db]")
    parts = [f"{host}:{port}"]
    path = u.path.strip("/")
    if path:
        if not path.isdigit():
            raise ConfigError(f"REDIS_CONNECTION_STRING={redact(url)!r}: database {path!r} is not a number")
        parts.append(f"db={path}")
    if u.username:
        parts.append(f"username={unquote(u.username)}")
    if u.password is not None:
        if "," in unquote(u.password):
            raise ConfigError(f"REDIS_CONNECTION_STRING={redact(url)!r}: the password contains ',', which Feast's Redis "
                              "connection string cannot carry; choose a password without ','")
        parts.append(f"password={unquote(u.password)}")
    if u.scheme == "rediss":
        parts.append("ssl=true")
    parts += [f"{k}={v}" for k, v in parse_qsl(u.query)]
    return ",".join(parts)
def encoder_precision(kind: str, value: str | None = None) -> str:
    """Return the precision of the ``kind`` encoder (``text`` or ``image``): ``value``, else
    ``$RECFEAST_TEXT_PRECISION`` / ``$RECFEAST_IMAGE_PRECISION``, else ``"fp32"`` (``bf16``: see
    :mod:`recfeast.encoders.text` and :mod:`recfeast.encoders.image`). The one place the main job and
    the query path read it.

    Raises:
        ConfigError: not ``fp32`` or ``bf16``.
    """
    var = f"RECFEAST_{kind.upper()}_PRECISION"
    p = (value or os.environ.get(var) or "fp32").strip().lower()
    if p not in ("fp32", "bf16"):
        raise ConfigError(f"{var}={p!r}: expected fp32 or bf16")
    return p


def redis_connection_string(value: str | None = None) -> str:
    """Return the Feast Redis connection string: ``value``, else ``$REDIS_CONNECTION_STRING``, else
    ``127.0.0.1:6379``, checked and in Feast's form.

    Accepted forms:

    - Feast's ``host:port[,db=N][,username=U][,password=P][,ssl=true][,ssl_ca_certs=PATH]...``
      (settings: :data:`REDIS_SETTINGS`; a password may not contain ``,``: use the URL form);
    - a URL ``redis://[user:password@]host:port[/db]`` or ``rediss://...`` (TLS; query parameters
      such as ``?ssl_ca_certs=/path/ca.crt`` pass through), converted to Feast's form.

    Raises:
        ConfigError: an unknown setting (``passwd=`` ...: the message names the right one), a
            ``password@host:port`` address, or a host without a port; messages never show the password.
    """
    from recfeast.redact import redact

    raw = (value or os.environ.get("REDIS_CONNECTION_STRING") or "127.0.0.1:6379").strip()
    if raw.startswith(("redis://", "rediss://")):
        raw = _redis_url_to_feast(raw)
    elif "://" in raw.split(",", 1)[0]:
        raise ConfigError(f"REDIS_CONNECTION_STRING={redact(raw)!r}: unsupported scheme; expected host:port[,password=...] "
                          "or redis[s]://[user:password@]host:port[/db]")
    hosts, bad = [], []
    for part in raw.split(","):
        if "=" in part:
            key = part.split("=", 1)[0].strip()
            if key not in REDIS_SETTINGS:
                hint = f" (did you mean {_TYPO[key.lower()]!r}?)" if key.lower() in _TYPO else ""
                bad.append(f"{key!r}{hint}")
        else:
            hosts.append(part.strip())
    where = f"REDIS_CONNECTION_STRING={redact(raw)!r}"
    if bad:
        raise ConfigError(f"{where}: unknown setting {', '.join(bad)}; expected host:port followed by key=value "
                          f"settings among: {', '.join(REDIS_SETTINGS)}")
    if not hosts:
        raise ConfigError(f"{where}: no host:port")
    for h in hosts:
        if "@" in h:
            raise ConfigError(f"REDIS_CONNECTION_STRING: {redact(h)!r} looks like password@host:port; write "
                              "host:port,password=... or redis://:password@host:port")
        host, sep, port = h.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"{where}: {h!r} is not host:port (e.g. 127.0.0.1:6379)")
    return raw


def project(value: str | None = None) -> str | None:
    """Feast project override: ``value``, else ``$RECFEAST_PROJECT``, else None (use the yaml's)."""
    return value or os.environ.get("RECFEAST_PROJECT") or None


def registry_url(value: str | None = None) -> str | None:
    """The SQL registry override: ``value``, else ``$RECFEAST_REGISTRY``, else None (the yaml's registry).

    ``postgresql://user:password@host:port/db`` (or ``postgres://``) becomes SQLAlchemy's
    ``postgresql+psycopg://...`` (the psycopg 3 driver recfeast installs); a URL naming a driver
    (``postgresql+psycopg://``) or another database SQLAlchemy knows is kept as given.

    Raises:
        ConfigError: not a URL with a scheme and a host (the message hides the password).
    """
    from urllib.parse import urlsplit

    from recfeast.redact import redact

    raw = (value or os.environ.get("RECFEAST_REGISTRY") or "").strip()
    if not raw:
        return None
    try:
        u = urlsplit(raw)
        u.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"RECFEAST_REGISTRY={redact(raw)!r}: not a valid URL ({redact(exc)})") from None
    if not u.scheme or (not u.hostname and not u.scheme.startswith("sqlite")):
        raise ConfigError(f"RECFEAST_REGISTRY={redact(raw)!r}: expected postgresql://user:password@host:5432/db")
    if u.scheme in ("postgresql", "postgres"):
        raw = "postgresql+psycopg://" + raw.split("://", 1)[1]
    return raw
