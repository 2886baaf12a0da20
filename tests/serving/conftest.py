"""Serving fixtures: the slice's online store in Redis too, and a small ranking model trained on it."""

from __future__ import annotations

import os
from unittest import mock

import pytest

from tests.conftest import drop_online, slice_split_dates


@pytest.fixture(scope="session")
def redis_small(small_run):
    """The slice's tables loaded into Redis (db 15) under the slice's project; (repo, project)."""
    from recfeast import store
    from recfeast.materialize import online

    repo, _, project = small_run
    fs = store.feature_store(repo, "redis", project)
    store.apply(fs)
    online.load(fs, repo / "data" / "tables", quiet=True)
    yield repo, project
    drop_online(fs)


@pytest.fixture(scope="session")
def small_model(small_run, small_data, tmp_path_factory):
    """A ranking model trained on the slice in seconds (2 epochs, no ablation); its checkpoint path."""
    from recfeast.training import TrainConfig, train

    repo, _, project = small_run
    val_start, test_start = slice_split_dates(small_data)
    out = tmp_path_factory.mktemp("small_model")
    with mock.patch.dict(os.environ, {"RECFEAST_PROJECT": project}):
        train(TrainConfig(repo=str(repo), data_dir=str(small_data[0]), out_dir=str(out), val_start=val_start,
                          test_start=test_start, max_epochs=2, eval_max_users=10, eval_negatives=5,
                          ablation=False), log=lambda *a: None)
    return out / "ranking_model.pt"


def _resp_commands(payload: bytes) -> list[list[bytes]]:
    """The commands in a packed RESP request: ``[[b"HMGET", key, field, ...], ...]``."""
    out, pos = [], 0
    while pos < len(payload):
        end = payload.index(b"\r\n", pos)
        argc, pos = int(payload[pos + 1:end]), end + 2
        args = []
        for _ in range(argc):
            end = payload.index(b"\r\n", pos)
            size = int(payload[pos + 1:end])
            args.append(payload[end + 2:end + 2 + size])
            pos = end + 2 + size + 2
        out.append(args)
    return out


@pytest.fixture
def redis_round_trips(monkeypatch):
    """Every request this process writes to Redis, as the list of commands each carries: one
    entry is one round trip (one write of packed commands, then their replies)."""
    from redis.connection import AbstractConnection

    sent: list[list[list[bytes]]] = []
    real = AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        chunks = [command] if isinstance(command, (str, bytes)) else command
        payload = b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks)
        sent.append(_resp_commands(payload))
        return real(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    return sent
