"""The HTTP API on the slice against hostile input and a broken store: no 500 from any body (NaN,
Infinity, lone surrogates, deep nesting), bounded rejections file, no password in any answer or log,
a /health that notices an emptied, partly evicted or stale online store (a Redis of its own, flushed),
the reload that repairs it, and a schemathesis run with every check against /openapi.json."""

import json
import os
import shutil
import subprocess
import time
from unittest import mock

import pytest
from fastapi.testclient import TestClient

from recfeast.cli import _service_ingestor, _service_reloader
from recfeast.serving.api import create_app
from recfeast.serving.metrics import Metrics
from recfeast.serving.security import ApiSettings, create_key
from recfeast.serving.service import RecommendService, ServiceConfig
from tests.serving.test_security import metric

pytestmark = pytest.mark.slow

TS = 893_300_000
REDIS_PORT = 18123   # a Redis of this module's own (FLUSHDB must not touch other tests' db 15)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "api_keys.json"
    key, _ = create_key(path, ["read", "write", "metrics", "admin"], "tests")
    return ApiSettings(keys_file=path, rate_per_s=0), key


@pytest.fixture(scope="module")
def repo_copy(small_run, tmp_path_factory):
    """A copy of the slice's repository (this module writes events and reloads it)."""
    src, _, project = small_run
    repo = tmp_path_factory.mktemp("safety") / "repo"
    shutil.copytree(src, repo)
    return repo, project


@pytest.fixture(scope="module")
def app(repo_copy, small_model, text_encoder, keys):
    """The full app on the copy (SQLite), with the real ingest and reload paths; (client, service, metrics)."""
    repo, project = repo_copy
    metrics = Metrics()
    svc = RecommendService.from_config(
        ServiceConfig(checkpoint=small_model, repo=repo, project=project, as_of=TS, candidates=20, refresh_every_s=0),
        observe=metrics.observe_stage, on_cache=metrics.cache_lookup, encoder=text_encoder)
    a = create_app(svc, metrics, ingestor_factory=lambda: _service_ingestor(svc), settings=keys[0],
                   reloader=_service_reloader(svc))
    return TestClient(a, raise_server_exceptions=False, headers={"X-API-Key": keys[1]}), svc, metrics


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"bare {name} in JSON")
    return json.loads(text, parse_constant=refuse)


def _deep(n: int, inner="1") -> str:
    return "[" * n + inner + "]" * n


def test_nan_infinity_and_surrogates_in_events(app, small_data, repo_copy):
    client, _, metrics = app
    user, item = small_data[1]["user_ids"][0], small_data[1]["item_ids"][0]
    raw = ('[{"user_id": %d, "item_id": %d, "action": "rate", "value": NaN, "event_timestamp": %d},'
           ' {"user_id": %d, "item_id": %d, "action": "click", "value": Infinity, "event_timestamp": %d},'
           ' {"user_id": %d, "item_id": %d, "action": "cl\\ud800ick", "event_timestamp": %d},'
           ' {"user_id": "\\udfff", "item_id": %d, "action": "click", "event_timestamp": -Infinity}]'
           % (user, item, TS, user, item, TS, user, item, TS, item))
    r = client.post("/events", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    body = _strict(r.text)
    assert body["error"] == "all 4 events rejected" and body["detail"] == []
    assert [x["index"] for x in body["rejected"]] == [0, 1, 2, 3]
    assert body["rejected"][0]["event"]["value"] == "NaN" and body["rejected"][1]["event"]["value"] == "Infinity"
    assert body["rejected"][2]["event"]["action"] == "cl\ufffdick"
    assert body["rejected"][3]["event"]["event_timestamp"] == "-Infinity"
    lines = (repo_copy[0] / "data" / "events" / "rejected.jsonl").read_text(encoding="utf-8").splitlines()
    recs = [_strict(ln) for ln in lines[-4:]]   # strict JSON: no bare NaN / Infinity
    assert [r["event"].get("value") for r in recs[:2]] == ["NaN", "Infinity"]
    assert metric(client.get("/metrics").text, "recfeast_internal_errors_total") == 0.0


@pytest.mark.parametrize("depth", [500, 900, 989, 1000, 5000])
@pytest.mark.parametrize("path", ["/events", "/recommend", "/features", "/search"])
def test_deep_json_is_a_4xx(app, path, depth):
    client, _, _ = app
    for body in (_deep(depth), '{"events": %s}' % _deep(depth), '{"user_id": %s}' % _deep(depth)):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (path, depth, r.status_code, r.text[:200])
        assert set(_strict(r.text)) >= {"error", "detail"}


def test_surrogates_and_nan_elsewhere(app):
    client, _, metrics = app
    cases = [("/search", '{"query": "\\ud800"}'), ("/search", '{"query": "ok", "k": NaN}'),
             ("/recommend", '{"user_id": NaN}'), ("/recommend", '{"user_id": 1, "\\ud800": 1}'),
             ("/features", '{"user_id": 1, "item_ids": [Infinity]}'), ("/events", '"\\ud800"'),
             ("/events", '{"events": [NaN]}')]
    for path, raw in cases:
        r = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code in (400, 422), (path, raw, r.status_code, r.text)
        assert set(_strict(r.text)) >= {"error", "detail"}
    r = client.post("/search", content='{"query": "\\ud800"}', headers={"content-type": "application/json"})
    assert "query: Input should be a valid string, unable to parse raw data as a unicode string" in r.json()["error"]
    assert metric(client.get("/metrics").text, "recfeast_internal_errors_total") == 0.0


def test_rejected_jsonl_is_bounded(app, repo_copy, monkeypatch):
    from recfeast.materialize import ingest

    client, _, _ = app
    path = repo_copy[0] / "data" / "events" / "rejected.jsonl"
    monkeypatch.setattr(ingest, "REJECTED_MAX_BYTES", 20_000)
    bad = [{"user_id": 1, "item_id": 424242, "action": "click", "event_timestamp": TS, "pad": "x" * 200}] * 60
    for _ in range(10):   # 10 x 60 rejections of ~300 bytes: 180 KB unbounded
        assert client.post("/events", json=bad).status_code == 422
    old = path.with_name("rejected.jsonl.1")
    assert path.stat().st_size <= 20_000 and old.stat().st_size <= 20_000
    lines = [_strict(ln) for ln in (old.read_text() + path.read_text()).splitlines()]
    assert any("dropped" in ln for ln in lines)   # a call over half the cap says what it left out
    assert all("reason" in ln for ln in lines)


def test_features_size_is_bounded(app, small_data):
    client, _, _ = app
    user, items = small_data[1]["user_ids"][0], small_data[1]["item_ids"]
    ids = (items * 30)[:150]
    slim = client.post("/features", json={"user_id": user, "item_ids": ids})
    assert slim.status_code == 200 and len(slim.json()["items"]) == 150
    assert "text_embedding" not in slim.json()["items"][0]
    r = client.post("/features", json={"user_id": user, "item_ids": ids, "vectors": True})
    assert r.status_code == 422 and "150 items with vectors: at most 100" in r.json()["error"]


# ------------------------------------------------------------------------------------ store and health
@pytest.fixture(scope="module")
def own_redis():
    """A redis-server of this module on REDIS_PORT, stopped at the end."""
    proc = subprocess.Popen(["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "ping"], capture_output=True).stdout.strip() == b"PONG":
            break
        time.sleep(0.1)
    yield f"127.0.0.1:{REDIS_PORT}"
    proc.terminate()
    proc.wait(timeout=30)


def _redis_service(repo, project, model, addr, **kw):
    with mock.patch.dict(os.environ, {"REDIS_CONNECTION_STRING": addr}):
        return RecommendService.from_config(ServiceConfig(checkpoint=model, repo=repo, project=project, as_of=TS,
                                                          online_store="redis", refresh_every_s=0,
                                                          load_query_encoder=False, **kw))


def test_health_notices_a_flushed_redis_and_reload_repairs_it(repo_copy, small_model, own_redis, keys):
    from recfeast import store
    from recfeast.materialize import online

    repo, project = repo_copy
    with mock.patch.dict(os.environ, {"REDIS_CONNECTION_STRING": own_redis}):
        fs = store.feature_store(repo, "redis", project)
        online.load(fs, repo / "data" / "tables", quiet=True)
    svc = _redis_service(repo, project, small_model, own_redis)
    http = TestClient(create_app(svc, settings=keys[0], reloader=_service_reloader(svc)),
                      raise_server_exceptions=False)
    h = http.get("/health")
    assert h.status_code == 200 and h.json()["status"] == "ok", h.text
    assert subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "FLUSHDB"], capture_output=True).returncode == 0
    h = http.get("/health")
    assert h.status_code == 503 and h.json()["status"] == "degraded" and h.json()["detail"].startswith("empty:")
    # the operator's remedy: an authenticated reload
    assert http.post("/admin/reload").status_code == 401
    r = http.post("/admin/reload", headers={"X-API-Key": keys[1]})
    assert r.status_code == 202 and r.json()["status"] == "started"
    deadline = time.time() + 300
    while http.get("/health").json()["reload"]["running"]:
        assert time.time() < deadline, "reload did not finish in 300 s"
        time.sleep(0.5)
    h = http.get("/health")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["reload"]["error"] is None, h.text

    # keys evicted: the sample user of user_profile is gone -> incomplete
    from recfeast import health

    rec = json.loads(subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "GET", health.redis_key(project).decode()],
                                    capture_output=True, text=True).stdout)
    sample = rec["views"]["user_profile"]["sample"]
    from recfeast.layout import entity_key_bytes
    import redis

    host, port = own_redis.split(":")
    r = redis.Redis(host=host, port=int(port))
    r.delete(entity_key_bytes(sample["join_key"], sample["id"]) + project.encode())
    h = http.get("/health")
    assert h.status_code == 503 and "incomplete: the sample entity of view 'user_profile'" in h.json()["detail"]


def test_health_notices_tables_newer_than_the_load(repo_copy, small_model, own_redis, keys):
    from recfeast import store
    from recfeast.materialize import online

    repo, project = repo_copy
    with mock.patch.dict(os.environ, {"REDIS_CONNECTION_STRING": own_redis}):
        online.load(store.feature_store(repo, "redis", project), repo / "data" / "tables", quiet=True)
    svc = _redis_service(repo, project, small_model, own_redis, health_max_lag_s=0)
    http = TestClient(create_app(svc, settings=keys[0]), raise_server_exceptions=False)
    assert http.get("/health").json()["status"] == "ok"
    table = repo / "data" / "tables" / "item_content.parquet"
    import pyarrow.parquet as pq

    saved, st = table.read_bytes(), table.stat()
    os.utime(table, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # touched (or copied): not a change
    assert http.get("/health").json()["status"] == "ok"
    t = pq.read_table(table)
    pq.write_table(t.slice(0, len(t) - 1), table)   # a new table that no load has put online
    h = http.get("/health")
    assert h.status_code == 503 and h.json()["status"] == "degraded"
    assert f"behind: table item_content.parquet ({len(t) - 1} rows)" in h.json()["detail"]
    table.write_bytes(saved)
    assert http.get("/health").json()["status"] == "ok"


def test_health_and_metrics_fail_fast_when_redis_goes_down(repo_copy, small_model, keys):
    """A Redis that stops while the server runs: /health answers 503 and /metrics 200 after one
    connection attempt and one retry per read (the reader's client), not Feast's client's 3 retries
    with backoff (~8 s per read). Counted at redis-py's connect, which still runs for real."""
    from redis.connection import Connection

    from recfeast import store
    from recfeast.materialize import online

    port = REDIS_PORT + 1
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG":
                break
            time.sleep(0.1)
        repo, project = repo_copy
        addr = f"127.0.0.1:{port}"
        with mock.patch.dict(os.environ, {"REDIS_CONNECTION_STRING": addr}):
            online.load(store.feature_store(repo, "redis", project), repo / "data" / "tables", quiet=True)
        svc = _redis_service(repo, project, small_model, addr)
        http = TestClient(create_app(svc, settings=keys[0]), raise_server_exceptions=False,
                          headers={"X-API-Key": keys[1]})
        assert http.get("/health").json()["status"] == "ok"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    connects = []
    real = Connection._connect

    def counting(self, *a, **kw):
        connects.append(self.port)
        return real(self, *a, **kw)

    with mock.patch.object(Connection, "_connect", counting):
        assert http.get("/metrics").status_code == 200
        assert connects == [port] * (1 + svc.client.reader.retries)     # the freshness record, read once
        h = http.get("/health")
    assert h.status_code == 503 and h.json()["status"] == "unavailable"
    assert "freshness record" in h.json()["freshness"]["error"]


@pytest.mark.usefixtures("redis_fails_fast")
@pytest.mark.parametrize("addr", ["redis://:hunter2@127.0.0.1:1", "127.0.0.1:1,password=hunter2"])
def test_no_password_in_answers_or_logs(repo_copy, small_model, keys, addr, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    repo, project = repo_copy
    from recfeast.serving.sdk import OnlineFeatureClient

    with mock.patch.dict(os.environ, {"REDIS_CONNECTION_STRING": addr}):
        client = OnlineFeatureClient(repo, "redis", project=project)
    svc = RecommendService.from_config(ServiceConfig(checkpoint=small_model, repo=repo, project=project, as_of=TS,
                                                     refresh_every_s=0, load_query_encoder=False))
    svc.client = client
    http = TestClient(create_app(svc, settings=keys[0]), raise_server_exceptions=False,
                      headers={"X-API-Key": keys[1]})
    answers = [http.get("/health"), http.post("/recommend", json={"user_id": 1}),
               http.post("/features", json={"user_id": 1, "item_ids": [1]}), http.get("/recommend?user_id=1")]
    assert [a.status_code for a in answers] == [503, 503, 503, 503]
    assert answers[0].json()["status"] == "unavailable"
    for a in answers:
        assert "hunter2" not in a.text, a.text
    assert "hunter2" not in caplog.text


# ---------------------------------------------------------------------------------------- schemathesis
#: /events validates each event against the catalog (known item, time not in the future, rating in
#: scale), which no schema can say: a schema-valid batch whose events are all refused is a 422; and
#: 10,000 events can pass the body limit (413). A body over the limit is a valid rejection anywhere.
SCHEMATHESIS_CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]

[[operations]]
include-path = "/events"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "413", "422", "429", "5xx"]
"""


def test_schemathesis_every_check(app, keys):
    """Every operation of /openapi.json with valid and invalid data (25 examples each), every
    schemathesis check (server errors, status codes and bodies as documented, content types,
    headers, valid data accepted, invalid data rejected, auth not ignored, unsupported methods)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.config import SchemathesisConfig

    client, _, _ = app
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app,
                                            config=SchemathesisConfig.from_str(SCHEMATHESIS_CONFIG))
    failures, calls = [], 0
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(case=op.as_strategy(mode, headers={"X-API-Key": keys[1]}))
            def run(case):
                nonlocal calls
                calls += 1
                try:
                    case.call_and_validate()
                except Exception as exc:   # every failure of every operation, reported together
                    failures.append(f"{op.label} ({mode}): {str(exc)[:800]}")

            try:
                run()
            except Unsatisfiable:   # no invalid request exists for an operation without parameters
                assert mode == GenerationMode.NEGATIVE
    assert calls >= 150
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(sorted(set(failures))[:12])
    assert metric(client.get("/metrics").text, "recfeast_internal_errors_total") == 0.0
