"""``recfeast keys create|list|revoke``: the API keys of ``recfeast serve`` (:mod:`recfeast.serving.security`).

The keys file (default ``<repo>/data/api_keys.json``, or ``--keys-file`` / ``$RECFEAST_API_KEYS_FILE``)
holds only salted HMACs of the keys, is written atomically and is readable by its owner only (0600).
``create`` prints the new key once: it cannot be shown again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from recfeast import config
from recfeast.errors import RecfeastError


def _file(keys_file, repo_path) -> Path:
    if keys_file:
        return Path(keys_file)
    return config.repo_path(repo_path) / "data" / "api_keys.json"


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)


_file_opt = click.option("--keys-file", type=click.Path(dir_okay=False), envvar="RECFEAST_API_KEYS_FILE",
                         default=None, help="Keys file. Default: $RECFEAST_API_KEYS_FILE or <repo>/data/api_keys.json.")
_repo_opt = click.option("--repo-path", type=click.Path(file_okay=False), default=None,
                         help="Feature repository (for the default keys file).")


@click.group()
def keys() -> None:
    """Create, list and revoke the API keys of `recfeast serve`."""


@keys.command("create")
@click.option("--scopes", default="read", show_default=True,
              help="Comma-separated scopes: read (features, recommend, search), write (events), metrics, admin (reload).")
@click.option("--name", default="", help="A label for the key (who or what uses it).")
@_file_opt
@_repo_opt
def create(scopes, name, keys_file, repo_path):
    """Add a key; print it once (store it now: only its hash is kept)."""
    from recfeast.serving.security import create_key

    try:
        path = _file(keys_file, repo_path)
        key, entry = create_key(path, [s.strip() for s in scopes.split(",") if s.strip()], name)
    except RecfeastError as exc:
        _fail(exc)
    click.echo(f"created key {entry['id']} ({', '.join(entry['scopes'])}) in {path}; it is shown only now:", err=True)
    click.echo(key)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@_file_opt
@_repo_opt
def list_keys(as_json, keys_file, repo_path):
    """The keys in the file: id, name, scopes, created, revoked (never the key or its hash)."""
    from recfeast.serving.security import read_keys_file

    try:
        path = _file(keys_file, repo_path)
        entries = read_keys_file(path)["keys"] if path.is_file() else []
    except RecfeastError as exc:
        _fail(exc)
    rows = [{k: e.get(k) for k in ("id", "name", "scopes", "created_at", "revoked_at")} for e in entries]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = f"revoked {r['revoked_at']}" if r["revoked_at"] else "active"
        click.echo(f"{r['id']}  {','.join(r['scopes']):<24} {r['created_at']}  {state}  {r['name']}")


@keys.command("revoke")
@click.argument("key_id")
@_file_opt
@_repo_opt
def revoke(key_id, keys_file, repo_path):
    """Revoke the key KEY_ID (a running server picks it up on restart)."""
    from recfeast.serving.security import revoke_key

    try:
        entry = revoke_key(_file(keys_file, repo_path), key_id)
    except RecfeastError as exc:
        _fail(exc)
    click.echo(f"revoked {entry['id']} at {entry['revoked_at']}")
