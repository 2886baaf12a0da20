"""The HTTP API on the slice: answers, the exact status code and message of every bad request (never
a 500), Prometheus metrics, the ingest path, and `recfeast serve` as a real process."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from recfeast.cli import _service_ingestor
from recfeast.serving.api import create_app
from recfeast.serving.metrics import Metrics
from recfeast.serving.security import ApiSettings, create_key
from recfeast.serving.service import RecommendService, ServiceConfig

pytestmark = pytest.mark.slow

TS = 893_300_000


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A keys file with one key of every scope; (settings, key)."""
    path = tmp_path_factory.mktemp("keys") / "api_keys.json"
    key, _ = create_key(path, ["read", "write", "metrics", "admin"], "tests")
    return ApiSettings(keys_file=path, rate_per_s=0), key


def keyed(app, keys) -> TestClient:
    """A test client that sends the key with every request."""
    return TestClient(app, raise_server_exceptions=False, headers={"X-API-Key": keys[1]})


@pytest.fixture(scope="module")
def api(small_run, small_model, text_encoder, keys):
    repo, _, project = small_run
    metrics = Metrics()
    cfg = ServiceConfig(checkpoint=small_model, repo=repo, online_store="sqlite", project=project, as_of=TS,
                        candidates=20, refresh_every_s=0)
    svc = RecommendService.from_config(cfg, observe=metrics.observe_stage, on_cache=metrics.cache_lookup,
                                       encoder=text_encoder)
    return keyed(create_app(svc, metrics, settings=keys[0]), keys), svc


def test_answers(api, small_data):
    client, svc = api
    user, items = small_data[1]["user_ids"][0], small_data[1]["item_ids"][:4]
    r = client.post("/features", json={"user_id": user, "item_ids": items, "request_ts": TS, "vectors": True})
    assert r.status_code == 200
    body = r.json()
    want = svc.client.get_features(user, items, TS).to_json()
    assert body == want and len(body["items"][0]["text_embedding"]) == 384
    slim = client.post("/features", json={"user_id": user, "item_ids": items}).json()   # vectors only when asked
    assert "text_embedding" not in slim["items"][0] and "popularity" in slim["items"][0]
    assert slim["request_ts"] == TS   # no request_ts: the service's --as-of clock, as /recommend
    rec = client.post("/recommend", json={"user_id": user, "k": 5}).json()
    assert rec["items"] == svc.recommend(user, 5)["items"] and len(rec["items"]) == 5
    assert client.get(f"/recommend?user_id={user}&k=5").json()["items"] == rec["items"]
    s = client.post("/search", json={"query": "galactic empire", "user_id": user, "k": 4}).json()
    assert len(s["items"]) == 4 and s["versions"]["query_encoder"] == svc.index.model_id
    h = client.get("/health")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["index"]["items"] == len(svc.index), (h.json()["detail"], h.json().get("freshness"))
    import pyarrow.parquet as pq

    tables = Path(svc.client.store.repo_path) / "data" / "tables"
    assert h.json()["online_load"]["rows"]["item_content"] == pq.read_metadata(tables / "item_content.parquet").num_rows
    # freshness lag on the replay's clock (--as-of), not 28 years behind the wall clock
    import pandas as pd

    newest = pd.read_parquet(tables / "item_content.parquet", columns=["event_timestamp"]).event_timestamp.max()
    lag = h.json()["freshness"]["views"]["item_content"]["lag_s"]
    assert lag == pytest.approx(TS - pd.Timestamp(newest).timestamp(), abs=1.0)
    assert TestClient(client.app).get("/health").status_code == 200   # open: no key needed
    trained = svc.ranker.embedding_models["sequence_model"]
    svc.ranker.embedding_models["sequence_model"] = ["sequence-gru@sha256:000000000000|other"]   # a promotion
    try:
        h = client.get("/health")
        assert h.status_code == 503 and h.json()["status"] == "degraded"
        assert "sequence_embedding of user" in h.json()["detail"]
    finally:
        svc.ranker.embedding_models["sequence_model"] = trained


BAD = [
    # (method, path, body or raw bytes, status, message fragment)
    ("post", "/recommend", b"{not json", 400, "malformed JSON body"),
    ("post", "/recommend", b"", 422, "no JSON body"),
    ("post", "/recommend", {"user_id": "abc"}, 422, "user_id: Input should be a valid integer"),
    ("post", "/recommend", {"user_id": 1.5}, 422, "user_id: Input should be a valid integer"),
    ("post", "/recommend", {"user_id": 1, "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ("post", "/recommend", {"user_id": 1, "k": 101}, 422, "k: Input should be less than or equal to 100"),
    ("post", "/recommend", {"user_id": 1, "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
    ("post", "/recommend", {"user_id": 987654}, 404, "user_id=987654: no such user"),
    ("get", "/recommend?user_id=x", None, 422, "user_id: Input should be a valid integer"),
    ("get", "/recommend?user_id=1&k=500", None, 422, "k: Input should be less than or equal to 100"),
    ("post", "/search", {"query": ""}, 422, "query: String should have at least 1 character"),
    ("post", "/search", {"query": "   "}, 422, "query: String should match pattern"),
    ("post", "/search", {"query": "x" * 513}, 422, "query: String should have at most 512 characters"),
    ("post", "/search", {"query": 7}, 422, "query: Input should be a valid string"),
    ("post", "/search", {"query": "comedy", "user_id": 987654}, 404, "no such user"),
    ("post", "/features", {"user_id": 1, "item_ids": []}, 422, "item_ids: List should have at least 1 item"),
    ("post", "/features", {"user_id": 1, "item_ids": list(range(1001))}, 422, "item_ids: List should have at most 1000"),
    ("post", "/features", {"user_id": 1, "item_ids": [1, "2"]}, 422, "item_ids.1: Input should be a valid integer"),
    ("post", "/features", {"user_id": 1, "item_ids": [2**63]}, 422, "item_ids.0: Input should be less than or equal to 9007199254740991"),
    ("post", "/features", {"user_id": 1, "item_ids": list(range(101)), "vectors": True}, 422, "101 items with vectors: at most 100"),
    ("post", "/search", {"query": "\x1c\x1f"}, 422, "query: String should match pattern"),
    ("post", "/features", [1, 2], 422, "Input should be a valid dictionary"),
    ("post", "/events", {"events": []}, 422, "no events"),
    ("post", "/events", {"events": "x"}, 422, "expected a JSON list of events"),
    ("post", "/events", b"[{]", 400, "malformed JSON body"),
    ("get", "/nowhere", None, 404, "no such endpoint: /nowhere"),
]


@pytest.mark.parametrize("method,path,body,status,message", BAD, ids=[f"{b[1]}-{b[3]}-{n}" for n, b in enumerate(BAD)])
def test_bad_requests_get_4xx_with_a_message(api, method, path, body, status, message):
    client, _ = api
    if isinstance(body, bytes):
        r = client.request(method, path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.request(method, path, json=body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "detail"} and message in r.json()["error"], r.json()


def test_metrics_count_requests_cache_and_rejections(api, small_data):
    client, _ = api
    before = client.get("/metrics").text
    user = small_data[1]["user_ids"][1]
    for _ in range(3):
        assert client.post("/search", json={"query": "a ghost story in an old house", "user_id": user}).status_code == 200
    client.post("/recommend", json={"user_id": 987654})
    after = client.get("/metrics").text

    def value(text, prefix):
        line = next((ln for ln in text.splitlines() if ln.startswith(prefix + " ")), None)
        return 0.0 if line is None else float(line.rsplit(" ", 1)[1])

    assert value(after, 'recfeast_query_cache_total{result="hit"}') - value(before, 'recfeast_query_cache_total{result="hit"}') == 2
    assert value(after, 'recfeast_query_cache_total{result="miss"}') - value(before, 'recfeast_query_cache_total{result="miss"}') == 1
    key = 'recfeast_request_seconds_count{code="200",endpoint="/search"}'
    assert value(after, key) - value(before, key) == 3
    key = 'recfeast_rejected_requests_total{code="404",endpoint="/recommend"}'
    assert value(after, key) - value(before, key) == 1
    assert 'recfeast_stage_seconds_bucket{le="0.001",stage="features"}' in after
    assert "recfeast_store_errors_total" in after or "recfeast_store_errors" in after


@pytest.mark.usefixtures("redis_fails_fast")
def test_store_down_is_503_and_counted(small_run, small_model, text_encoder, keys):
    """Redis stopping answering is a 503 naming the store, counted in recfeast_store_errors_total."""
    repo, _, project = small_run
    from recfeast.serving.sdk import OnlineFeatureClient

    os.environ["REDIS_CONNECTION_STRING"], saved = "127.0.0.1:1,db=15", os.environ["REDIS_CONNECTION_STRING"]
    try:
        client = OnlineFeatureClient(repo, "redis", project=project)
    finally:
        os.environ["REDIS_CONNECTION_STRING"] = saved
    svc = RecommendService.from_config(ServiceConfig(checkpoint=small_model, repo=repo, project=project, as_of=TS,
                                                     refresh_every_s=0, load_query_encoder=False))
    svc.client = client  # same registry, a Redis that is not there
    metrics = Metrics()
    http = keyed(create_app(svc, metrics, settings=keys[0]), keys)
    r = http.post("/recommend", json={"user_id": 1})
    assert r.status_code == 503 and "online store unavailable" in r.json()["error"]
    assert http.get("/health").status_code == 503
    text = http.get("/metrics").text
    assert 'recfeast_store_errors_total{store="redis"} 1.0' in text, [x for x in text.splitlines() if "store_errors" in x]
    assert http.post("/search", json={"query": "x"}).status_code == 422  # no encoder loaded: said so


def test_events_go_through_the_ingest_path(small_run, small_model, small_data, tmp_path, text_encoder, keys):
    """/events on a copy of the slice's repository: accepted, duplicates and rejections as the Ingestor says."""
    src, _, project = small_run
    repo = tmp_path / "repo"
    shutil.copytree(src, repo)
    svc = RecommendService.from_config(ServiceConfig(checkpoint=small_model, repo=repo, project=project, as_of=TS,
                                                     refresh_every_s=0, load_query_encoder=False))
    http = keyed(create_app(svc, ingestor_factory=lambda: _service_ingestor(svc), settings=keys[0]), keys)
    user, items = small_data[1]["user_ids"][0], small_data[1]["item_ids"]
    events = [{"user_id": user, "item_id": items[0], "action": "click", "event_timestamp": TS},
              {"user_id": user, "item_id": items[1], "action": "rate", "value": 4, "event_timestamp": TS + 5},
              {"user_id": user, "item_id": 424242, "action": "click", "event_timestamp": TS + 6}]
    r = http.post("/events", json={"events": events})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 2 and body["duplicates"] == 0
    assert [x["index"] for x in body["rejected"]] == [2] and body["rejected"][0]["event"] == events[2]
    again = http.post("/events", json=events[:2]).json()
    assert again["accepted"] == 0 and again["duplicates"] == 2
    bad = http.post("/events", json=[{"user_id": user}])
    assert bad.status_code == 422 and bad.json()["error"] == "all 1 events rejected"
    assert bad.json()["rejected"][0]["index"] == 0


def _free_port():
    """A free port in this suite's range for extra servers (18100-18199)."""
    for port in range(18100, 18200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 18100-18199")


def test_recfeast_serve_refuses_to_start_without_keys(small_run, small_model, tmp_path):
    repo, _, project = small_run
    exe = str(Path(sys.executable).parent / "recfeast")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECFEAST_API_")}
    r = subprocess.run([exe, "serve", "--repo-path", str(repo), "--model", str(small_model), "--no-search",
                        "--api-keys-file", str(tmp_path / "none.json")], env={**env, "RECFEAST_PROJECT": project},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "does not exist: create a key with `recfeast keys create`" in r.stderr
    assert "Traceback" not in r.stderr


def test_recfeast_serve_answers_over_http(small_run, small_model, small_data, tmp_path):
    repo, _, project = small_run
    port = _free_port()
    exe = str(Path(sys.executable).parent / "recfeast")
    keys_file = tmp_path / "keys.json"
    env = {**os.environ, "RECFEAST_PROJECT": project, "RECFEAST_API_KEYS_FILE": str(keys_file)}
    made = subprocess.run([exe, "keys", "create", "--scopes", "read"], env=env, capture_output=True, text=True,
                          check=True)
    key = made.stdout.strip()
    proc = subprocess.Popen([exe, "serve", "--repo-path", str(repo), "--model", str(small_model), "--port", str(port),
                             "--as-of", str(TS), "--no-search"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:   # open
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "recfeast serve did not come up in 120 s"
            time.sleep(0.5)
        user = small_data[1]["user_ids"][0]
        assert httpx.post(f"{url}/recommend", json={"user_id": user, "k": 3}, timeout=30).status_code == 401
        auth = {"Authorization": f"Bearer {key}"}
        r = httpx.post(f"{url}/recommend", json={"user_id": user, "k": 3}, headers=auth, timeout=30)
        assert r.status_code == 200 and len(r.json()["items"]) == 3
        assert httpx.post(f"{url}/search", json={"query": "x"}, headers=auth, timeout=30).status_code == 422
        ev = httpx.post(f"{url}/events", json=[{"user_id": user}], headers=auth, timeout=30)
        assert ev.status_code == 403 and "'write' scope" in ev.json()["error"]   # a read key cannot write
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "recfeast serving ranking_v1 from sqlite" in out and "API keys required" in out
    assert key not in out
