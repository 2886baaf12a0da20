"""API keys, scopes, limits and the error contract of the HTTP API, without a model (fast tier).

The app is built over no service (``service=None``): every request here is answered by the guard in
front of the routes (401/403/413/429), by routing (404/405), or, once past the guard, by the
catch-all that turns the resulting exception into the documented, counted 500."""

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from recfeast.errors import ConfigError
from recfeast.jsonsafe import dumps, json_safe
from recfeast.serving.api import create_app
from recfeast.serving.metrics import Metrics
from recfeast.serving.security import ApiSettings, KeyStore, RateLimiter, create_key, read_keys_file, revoke_key

RECFEAST = str(Path(sys.executable).parent / "recfeast")


def metric(text: str, name: str) -> float | None:
    """The value of the sample ``name`` (with its labels) in a Prometheus exposition, None if absent."""
    line = next((ln for ln in text.splitlines() if ln.startswith(name + " ")), None)
    return None if line is None else float(line.rsplit(" ", 1)[1])


def _app(tmp_path, **kw):
    path = tmp_path / "keys.json"
    reader, _ = create_key(path, ["read"], "reader")
    writer, _ = create_key(path, ["read", "write", "metrics"], "writer")
    settings = ApiSettings(keys_file=path, **kw)
    metrics = Metrics()
    app = create_app(None, metrics, settings=settings)
    return TestClient(app, raise_server_exceptions=False), reader, writer, metrics


def test_keys_file_holds_hashes_only_mode_0600(tmp_path):
    path = tmp_path / "sub" / "keys.json"
    key, entry = create_key(path, ["write", "read"], "ingest bot")
    assert key.startswith(f"rfk_{entry['id']}_") and len(key) > 40
    text = path.read_text()
    assert key not in text and key.split("_")[-1] not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = read_keys_file(path)
    assert data["keys"][0]["scopes"] == ["read", "write"] and len(data["salt"]) == 32
    assert not [p for p in path.parent.iterdir() if p.name != "keys.json"]   # no temporary file left
    store = KeyStore(path)
    assert store.lookup(key).scopes == {"read", "write"} and store.lookup(key + "x") is None
    revoke_key(path, entry["id"])
    assert KeyStore(path).lookup(key) is None
    with pytest.raises(ConfigError, match="no key with id"):
        revoke_key(path, "nope")
    with pytest.raises(ConfigError, match="expected one or more of"):
        create_key(path, ["root"])
    # two files never share hashes (per-file salt)
    other = tmp_path / "other.json"
    create_key(other, ["read"])
    assert read_keys_file(other)["salt"] != data["salt"]


def test_env_keys(tmp_path):
    store = KeyStore(None, "k" * 20 + "=read+write, " + "m" * 20)
    assert store.lookup("k" * 20).scopes == {"read", "write"} and store.lookup("m" * 20).scopes == {"read"}
    with pytest.raises(ConfigError, match="RECFEAST_API_KEYS entry 1") as err:
        KeyStore(None, "short=read")
    assert "short" not in str(err.value)          # the key is never echoed
    with pytest.raises(ConfigError, match="does not exist"):
        KeyStore(tmp_path / "missing.json")


def test_token_bucket():
    rl = RateLimiter(rate_per_s=2.0, burst=3)
    assert [rl.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rl.take("a", now=0.0) == pytest.approx(0.5)      # empty: one token every 0.5 s
    assert rl.take("b", now=0.0) == 0.0                     # buckets are per name
    assert rl.take("a", now=1.0) == 0.0 and rl.take("a", now=1.0) == 0.0
    assert rl.take("a", now=1.0) > 0
    assert RateLimiter(0, 1).take("x") == 0.0               # 0: no limit


def test_no_keys_refuses_to_build_unless_anonymous(tmp_path):
    with pytest.raises(ConfigError, match="--allow-anonymous"):
        create_app(None, settings=ApiSettings())
    client = TestClient(create_app(None, settings=ApiSettings(allow_anonymous=True)), raise_server_exceptions=False)
    assert client.get("/metrics").status_code == 200       # anonymous: read, write, metrics ...
    r = client.post("/admin/reload")
    assert r.status_code == 403 and r.json() == {"error": "anonymous access lacks the 'admin' scope needed for "
                                                          "/admin/reload", "detail": []}


def test_401_403_with_documented_body(tmp_path):
    client, reader, writer, _ = _app(tmp_path)
    r = client.post("/recommend", json={"user_id": 1})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert set(r.json()) == {"error", "detail"} and "X-API-Key" in r.json()["error"]
    r = client.post("/events", json=[{"user_id": 1}], headers={"X-API-Key": "rfk_nope_" + "a" * 43})
    assert r.status_code == 401 and r.json()["error"] == "unknown or revoked API key"
    assert "rfk_nope" not in r.text
    r = client.post("/events", json=[{"user_id": 1}], headers={"Authorization": f"Bearer {reader}"})
    assert r.status_code == 403 and "lacks the 'write' scope" in r.json()["error"] and reader not in r.text
    assert client.get("/metrics", headers={"X-API-Key": reader}).status_code == 403
    assert client.get("/metrics", headers={"X-API-Key": writer}).status_code == 200
    assert client.get("/metrics").status_code == 401


def test_body_limit_before_reading(tmp_path):
    client, reader, writer, _ = _app(tmp_path, max_body_bytes=2048)
    big = json.dumps({"user_id": 1, "item_ids": list(range(1000))})
    r = client.post("/features", content=big, headers={"X-API-Key": reader, "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == f"request body of {len(big)} bytes: at most 2048 bytes"

    def chunks():   # no Content-Length: counted while read, refused past the limit
        for _ in range(10):
            yield b" " * 1000
    r = client.post("/events", content=chunks(), headers={"X-API-Key": writer, "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "request body over 2048 bytes"
    # unauthenticated big bodies are refused too
    assert client.post("/events", content=big, headers={"content-type": "application/json"}).status_code == 413


def test_rate_limit_429_with_retry_after(tmp_path):
    client, reader, writer, metrics = _app(tmp_path, rate_per_s=0.01, burst=2)
    codes = [client.get("/metrics", headers={"X-API-Key": writer}).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    r = client.get("/metrics", headers={"X-API-Key": writer})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and set(r.json()) == {"error", "detail"}
    assert client.get("/metrics", headers={"X-API-Key": reader}).status_code == 403   # other key: own bucket
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    assert metric(text, 'recfeast_rejected_requests_total{code="429",endpoint="/metrics"}') == 2.0


def test_unexpected_error_is_a_counted_500_without_internals(tmp_path, caplog):
    client, reader, _, metrics = _app(tmp_path)
    r = client.post("/recommend", json={"user_id": 1}, headers={"X-API-Key": reader})   # no service: a bug
    assert r.status_code == 500
    assert r.json() == {"error": "internal error: the server failed on this request; it was logged", "detail": []}
    assert "AttributeError" not in r.text and "NoneType" not in r.text
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    assert metric(text, "recfeast_internal_errors_total") == 1.0
    assert metric(text, 'recfeast_request_seconds_count{code="500",endpoint="/recommend"}') == 1.0
    assert "AttributeError" in caplog.text   # the log has the traceback


def test_404_405_and_parse_errors_use_the_documented_body(tmp_path):
    client, reader, _, _ = _app(tmp_path)
    r = client.get("/nowhere")
    assert r.status_code == 404 and r.json() == {"error": "no such endpoint: /nowhere (see /docs)", "detail": []}
    r = client.get("/features", headers={"X-API-Key": reader})
    assert r.status_code == 405 and set(r.json()) == {"error", "detail"} and "POST" in r.headers["allow"]
    deep = "[" * 5000 + "]" * 5000
    r = client.post("/recommend", content=deep, headers={"X-API-Key": reader, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"].startswith("malformed JSON body"), r.text


def test_openapi_documents_codes_and_security(tmp_path):
    client, *_ = _app(tmp_path)
    spec = client.get("/openapi.json").json()
    assert {"APIKeyHeader", "HTTPBearer"} <= set(spec["components"]["securitySchemes"])
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            assert {"429", "500"} <= codes, (path, method)
            if path != "/health":
                assert {"401", "403", "413"} <= codes and op.get("security"), (path, method)
            for code, resp in op["responses"].items():
                if code.startswith(("4", "5")) and code != "503" or (code == "503" and path != "/health"):
                    schema = resp["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, method, code)
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_json_safe_never_fails():
    weird = {"v": float("nan"), "w": [float("inf"), -math.inf], "s": "a\ud800b", "\udfff": 1}
    out = json.loads(dumps(weird))
    assert out == {"v": "NaN", "w": ["Infinity", "-Infinity"], "s": "a\ufffdb", "\ufffd": 1}
    deep = []
    for _ in range(5000):
        deep = [deep]
    text = dumps({"event": deep})
    assert "<nested too deep>" in text and "NaN" not in dumps([1.0])
    assert json_safe({"a": (1, 2)}) == {"a": [1, 2]}


def test_cli_keys_create_list_revoke(tmp_path):
    path = tmp_path / "keys.json"
    env = {**os.environ, "RECFEAST_API_KEYS_FILE": str(path)}
    out = subprocess.run([RECFEAST, "keys", "create", "--scopes", "read,write", "--name", "bot"], env=env,
                         capture_output=True, text=True, check=True)
    key = out.stdout.strip()
    assert key.startswith("rfk_") and "shown only now" in out.stderr and key not in out.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and key not in path.read_text()
    listed = json.loads(subprocess.run([RECFEAST, "keys", "list", "--json"], env=env, capture_output=True,
                                       text=True, check=True).stdout)
    assert listed == [{"id": key.split("_")[1], "name": "bot", "scopes": ["read", "write"],
                       "created_at": listed[0]["created_at"], "revoked_at": None}]
    assert key not in json.dumps(listed) and "hash" not in listed[0]
    subprocess.run([RECFEAST, "keys", "revoke", listed[0]["id"]], env=env, check=True, capture_output=True)
    assert KeyStore(path).lookup(key) is None
    bad = subprocess.run([RECFEAST, "keys", "create", "--scopes", "root"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "expected one or more of" in bad.stderr and "Traceback" not in bad.stderr
