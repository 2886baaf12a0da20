"""Secrets never leave: a Redis password appears in no message, log, run record or CLI output;
configuration mistakes are clear messages, never tracebacks; Redis with a password and with TLS works."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from recfeast import config
from recfeast.errors import ConfigError, StoreError
from recfeast.redact import redact
from tests.conftest import ROOT, make_repo, unique_project
from tests.redis_server import make_certs, redis_server

PW = "Zq7-s3cret-9fK"
PORT, TLS_PORT = 18201, 18202
RECFEAST = str(Path(sys.executable).with_name("recfeast"))


# ------------------------------------------------------------------ configuration mistakes
@pytest.mark.parametrize("value, message", [
    (f"127.0.0.1:6379,passwd={PW}", "unknown setting 'passwd' (did you mean 'password'?)"),
    (f"{PW}@127.0.0.1:6379", "looks like password@host:port"),
    (f"127.0.0.1:6379,db=0,pwd={PW}", "did you mean 'password'"),
    ("127.0.0.1", "is not host:port"),
    (f"redis://:{PW}@127.0.0.1:notaport", "not a valid URL"),
    (f"redis://:{PW}@127.0.0.1:6379/zero", "database 'zero' is not a number"),
    (f"http://u:{PW}@127.0.0.1:6379", "unsupported scheme"),
])
def test_bad_connection_strings_are_clear_and_redacted(value, message):
    with pytest.raises(ConfigError) as err:
        config.redis_connection_string(value)
    assert message in str(err.value) and PW not in str(err.value)


def test_redis_urls_become_feasts_form():
    assert config.redis_connection_string(f"rediss://alice:{PW}@cache.local:6380/3?ssl_ca_certs=/etc/ca.crt") == \
        f"cache.local:6380,db=3,username=alice,password={PW},ssl=true,ssl_ca_certs=/etc/ca.crt"
    assert config.redis_connection_string(f"redis://:{PW}@h") == f"h:6379,password={PW}"
    assert config.redis_connection_string(f"h:1,db=15,password={PW},ssl=true") == f"h:1,db=15,password={PW},ssl=true"


def test_every_recfeast_error_message_is_redacted():
    exc = StoreError(f"feast materialize into redis failed: Error connecting to 127.0.0.1:6379,password={PW} "
                     f"and redis://bob:{PW}@host:1 and {PW}@10.0.0.1:6379")
    assert PW not in str(exc) and str(exc).count("***") == 3
    assert PW not in redact(f"{{'connection_string': '127.0.0.1:6379,username=u,password={PW}'}}")


@pytest.mark.parametrize("text", [
    f'{{"password": "{PW}"}}', f"{{'host': 'h', 'password': '{PW}', 'db': 0}}", f"redis-server --requirepass {PW}",
    f"postgresql+psycopg://postgres:{PW}@127.0.0.1:5432/db", f"rediss://:{PW}@cache:6380/0",
    f"127.0.0.1:6379,username=u,password={PW},ssl=true", f"Error connecting to {PW}@127.0.0.1:6379.",
])
def test_redact_covers_quoted_and_url_forms(text):
    assert PW not in redact(text) and "***" in redact(text)


def test_cli_typo_is_one_line_not_a_traceback(tmp_path):
    repo = make_repo(tmp_path / "repo")
    res = CliRunner().invoke(
        __import__("recfeast.cli", fromlist=["main"]).main,
        ["lookup", "--user", "1", "--items", "1", "--repo-path", str(repo), "--online-store", "redis"],
        env={"REDIS_CONNECTION_STRING": f"127.0.0.1:{PORT},passwd={PW}"})
    assert res.exit_code == 2, res.output
    assert "did you mean 'password'" in res.output and PW not in res.output and "Traceback" not in res.output


# ------------------------------------------------------------------ run records
def test_run_records_are_private_redacted_and_dead_runs_interrupted(tmp_path):
    from recfeast.materialize import schedule

    repo = make_repo(tmp_path / "repo")
    code = ("import time; from recfeast.materialize.schedule import recorded_run\n"
            f"with recorded_run({str(repo)!r}, 'materialize'):\n    print('in', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "in"
    assert schedule.recent_runs(repo, 1)[0]["status"] == "running"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with pytest.raises(ConfigError):   # a failed run records its (redacted) error
        with schedule.recorded_run(repo, "materialize"):
            config.redis_connection_string(f"{PW}@127.0.0.1:6379")
    failed, killed = schedule.recent_runs(repo, 2)
    assert killed["status"] == "interrupted" and f"pid {proc.pid}" in killed["detail"]
    assert failed["status"] == "failed" and "password@host:port" in failed["detail"]
    db = schedule.state_dir(repo) / "runs.sqlite"
    assert PW.encode() not in db.read_bytes()
    assert oct(db.stat().st_mode & 0o777) == "0o600"
    res = CliRunner().invoke(__import__("recfeast.cli", fromlist=["main"]).main,
                             ["jobs", "--json", "--repo-path", str(repo)])
    assert res.exit_code == 0 and [r["status"] for r in json.loads(res.output)] == ["failed", "interrupted"]


# ------------------------------------------------------------------ a real password-protected Redis
def _cli(args, env, stdin=None):
    return subprocess.run([RECFEAST, *args], capture_output=True, text=True, env=env, input=stdin, timeout=900)


@pytest.mark.slow
def test_no_output_of_a_run_against_a_password_protected_redis_holds_the_password(small_data, slice_embeddings,
                                                                                  tmp_path):
    data, facts = small_data
    repo = make_repo(tmp_path / "repo", embeddings=slice_embeddings)
    base = {**os.environ, "RECFEAST_PROJECT": unique_project(), "RECFEAST_ONLINE_STORE": "redis",
            "RECFEAST_REPO_PATH": str(repo)}
    good = {**base, "REDIS_CONNECTION_STRING": f"127.0.0.1:{PORT},password={PW}"}
    outputs = {}
    with redis_server(PORT, PW, workdir=tmp_path):
        r = outputs["materialize"] = _cli(["materialize", "--data-dir", str(data)], good)
        assert r.returncode == 0, r.stderr
        user, items = facts["user_ids"][0], facts["item_ids"][:3]
        lookup = ["lookup", "--user", str(user), "--items", ",".join(map(str, items)), "--request-ts", "893300000"]
        r = outputs["lookup"] = _cli(lookup, good)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["user_id"] == user
        url = {**base, "REDIS_CONNECTION_STRING": f"redis://:{PW}@127.0.0.1:{PORT}/0"}
        r = outputs["lookup_url"] = _cli(lookup, url)
        assert r.returncode == 0 and json.loads(r.stdout) == json.loads(outputs["lookup"].stdout)
        event = json.dumps({"user_id": user, "item_id": items[0], "action": "click", "event_timestamp": 893_300_000})
        r = outputs["ingest"] = _cli(["ingest"], good, stdin=event + "\n")
        assert r.returncode == 0 and json.loads(r.stdout)["accepted"] == 1, r.stderr
        # mistakes: a wrong password, a typo, the password@host form, in the CLI and in a scheduled run
        for name, conn in {"wrong": f"127.0.0.1:{PORT},password=not-{PW}", "typo": f"127.0.0.1:{PORT},passwd={PW}",
                           "at": f"{PW}@127.0.0.1:{PORT}"}.items():
            r = outputs[f"lookup_{name}"] = _cli(lookup, {**base, "REDIS_CONNECTION_STRING": conn})
            assert r.returncode != 0 and "Traceback" not in r.stderr and r.stderr.startswith("error:"), r.stderr
        code = ("from recfeast.materialize import schedule as s\n"
                f"s.LOAD_ATTEMPTS = 1\nprint(s.run_job('load_online', {str(data)!r}, {str(repo)!r}, ('redis',)))")
        r = outputs["scheduled"] = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                  env={**base, "REDIS_CONNECTION_STRING": f"{PW}@127.0.0.1:{PORT}"})
        assert "'status': 'failed'" in r.stdout, r.stderr
        r = outputs["jobs"] = _cli(["jobs", "--json"], good)
        runs = json.loads(r.stdout)
        assert [x["job"] for x in runs[:2]] == ["load_online", "materialize"] and runs[1]["status"] == "ok"
        assert "password@host:port" in runs[0]["detail"]
    leaks = [f"{name} {stream}" for name, r in outputs.items() for stream in ("stdout", "stderr")
             if PW in getattr(r, stream)]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    leaks += [str(p) for p in files if PW.encode() in p.read_bytes()]
    assert leaks == []
    assert len(files) > 10 and (repo / "data" / "scheduler" / "runs.sqlite") in files
    assert oct((repo / "data" / "scheduler" / "runs.sqlite").stat().st_mode & 0o777) == "0o600"


@pytest.mark.slow
def test_redis_over_tls_with_a_password(small_run, small_data, tmp_path, monkeypatch):
    """``rediss://`` (and Feast's ``ssl=true``) with a CA file: write with Feast, read with recfeast's reader."""
    from recfeast import store
    from recfeast.materialize import online
    from recfeast.serving.sdk import OnlineFeatureClient

    src, _, _ = small_run
    repo = make_repo(tmp_path / "repo")
    shutil.copytree(src / "data" / "tables", repo / "data" / "tables")
    project = unique_project()
    certs = make_certs(tmp_path / "certs")
    user, items = small_data[1]["user_ids"][1], small_data[1]["item_ids"][:5]
    fs = store.feature_store(repo, "sqlite", project)
    store.apply(fs)
    online.load(fs, repo / "data" / "tables", quiet=True)
    want = OnlineFeatureClient(repo, "sqlite", project=project).get_features(user, items, 893_300_000)
    with redis_server(TLS_PORT, PW, tls=certs, workdir=tmp_path):
        for conn in (f"rediss://:{PW}@127.0.0.1:{TLS_PORT}/0?ssl_ca_certs={certs['ca']}",
                     f"127.0.0.1:{TLS_PORT},password={PW},ssl=true,ssl_ca_certs={certs['ca']}"):
            monkeypatch.setenv("REDIS_CONNECTION_STRING", conn)
            rfs = store.feature_store(repo, "redis", project)
            online.load(rfs, repo / "data" / "tables", quiet=True)
            client = OnlineFeatureClient(repo, "redis", project=project)
            got = client.get_features(user, items, 893_300_000)
            pd.testing.assert_frame_equal(got.status, want.status)
            np.testing.assert_array_equal(got.arrays["text_embedding"], want.arrays["text_embedding"])
            assert got.arrays["rating_count_total"][0] == want.arrays["rating_count_total"][0]
        # without the CA the certificate is refused: TLS is really on
        monkeypatch.setenv("REDIS_CONNECTION_STRING", f"rediss://:{PW}@127.0.0.1:{TLS_PORT}/0")
        with pytest.raises(StoreError) as err:
            OnlineFeatureClient(repo, "redis", project=project).get_features(user, items, 893_300_000)
        assert PW not in str(err.value)


def test_model_identities_are_not_taken_for_passwords():
    """``name@sha256:<hex>`` looks like ``password@host:port``; it must survive redaction."""
    from recfeast.redact import redact

    assert redact("registered: ['text-v2@sha256:3a4182008839', 'x@sha256:0']") == \
        "registered: ['text-v2@sha256:3a4182008839', 'x@sha256:0']"
    assert redact("hunter2@127.0.0.1:6379,db=1") == "***@127.0.0.1:6379,db=1"
