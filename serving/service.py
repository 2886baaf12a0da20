"""Recommend and search: retrieve candidates -> online features -> ranking model -> top k.

>>> svc = RecommendService.from_config(ServiceConfig(checkpoint="runs/ranking/ranking_model.pt"))
>>> svc.recommend(196, k=10)["items"][0]        # {"item_id", "score", "retrieval_score"}
>>> svc.search("space opera with rebels", user_id=196, k=10)

Recommend retrieves the items nearest the user's sequence embedding (it lives in the item
text-embedding space), topped up with the most popular items (all of them for a user without
history, or for a catalog whose spec has no sequence embedding); search retrieves the items nearest
the query embedding and ranks them by ``query_weight * query cosine + (1 - query_weight) * model
probability``. Each answer names the feature service, the index state, the embedding identities and
the ranking checkpoint it used.

Ids are the catalog's own, int or str as its spec (``catalog.yaml``) declares them; a user is known
when any user view of the service has a row for it (else :class:`UnknownUserError`). Popularity is
the spec's ``item_content`` ``popularity`` column (the latest row per item). Items the user already
interacted with are left out of recommendations when the online store knows them (unless the spec
says ``serving: {exclude_interacted: false}``): the
``last_item_ids`` of the pushed ``user_realtime`` view (the last 10 ingested events; int64 catalogs
only). That is best effort: history that only reached the batch tables is not online item by item
and is not filtered; search never filters (a user may look for what they bought).

A recommendation costs one online-store round trip when the candidates' item rows are cached: the
user's rows with the recent items and the load sentinel (one Redis pipeline holding one HMGET and
one GET, or one SQLite statement); the item rows come from the client's in-process cache
(:mod:`recfeast.serving.itemcache`, emptied when the sentinel changes). Items not cached cost a
second round trip (one pipeline of one HMGET per candidate, or one statement), with the user's row
reused, not read again; retrieval needs the user's sequence embedding from the first, so the two
cannot merge. Search costs one (anonymous) or one to two (with a user). The ranker scores the
columnar arrays as read (:meth:`Ranker.score`); nothing per request is shared and written across
threads but the item cache, which has its own lock.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recfeast import config
from recfeast.errors import FeatureLookupError, ModelError
from recfeast.serving.index import latest_item_rows
from recfeast.serving.itemcache import DEFAULT_CAPACITY, DEFAULT_MAX_AGE_S

MAX_K = 100


class UnknownUserError(FeatureLookupError):
    """The user has no row in the online store (the HTTP API answers 404)."""


@dataclass
class ServiceConfig:
    """What a :class:`RecommendService` serves.

    Attributes:
        checkpoint: ranking model (``recfeast train`` output). repo / online_store / project /
            feature_service: the online features (defaults as in :class:`OnlineFeatureClient`).
        candidates: items retrieved before ranking. popular: popular items added to recommend's
            candidates. query_weight: share of the query cosine in search scores (0..1).
        as_of: unix seconds used as "now" for request-time features (replaying historical data
            such as MovieLens, whose users stopped rating in 1998); None = the clock.
        refresh_every_s: how often a background thread checks the tables for new embeddings (0 = never).
        health_max_lag_s: seconds a table may have been rewritten without an online load before
            ``/health`` reports the store as behind (:func:`recfeast.health.check`).
        load_query_encoder: load the text encoder for search (False: recommend only).
        item_cache: items whose decoded item features are kept in process between online loads
            (:mod:`recfeast.serving.itemcache`: emptied when a load's sentinel changes, after
            ``item_cache_max_age_s`` seconds, or when full); 0 reads every candidate from the store.
    """

    checkpoint: str | Path
    repo: str | Path | None = None
    online_store: str | None = None
    project: str | None = None
    feature_service: str = "ranking_v1"
    candidates: int = 100
    popular: int = 20
    query_weight: float = 0.5
    as_of: int | None = None
    refresh_every_s: float = 60.0
    load_query_encoder: bool = True
    health_max_lag_s: float = 600.0
    item_cache: int = DEFAULT_CAPACITY
    item_cache_max_age_s: float = DEFAULT_MAX_AGE_S


class RecommendService:
    """Holds the online client, the index, the ranker and the query embedder of one deployment.

    Args:
        client: :class:`recfeast.serving.sdk.OnlineFeatureClient`. index: :class:`ItemIndex`.
        ranker: :class:`Ranker`. embedder: :class:`QueryEmbedder` or None (search refused).
        cfg: :class:`ServiceConfig`. observe: optional ``callback(stage, seconds)`` (metrics).

    Raises:
        ModelError: the ranker, the index and the query encoder disagree on the text embedding
            identity, or the service lacks a feature the ranker needs.
    """

    def __init__(self, client, index, ranker, embedder, cfg: ServiceConfig, observe=None):
        self.client, self.index, self.ranker, self.embedder, self.cfg = client, index, ranker, embedder, cfg
        self.observe = observe or (lambda stage, seconds: None)
        ranker.check_service(client.feature_names, client.service.name)
        trained = ranker.embedding_models.get("text_model")
        if trained and index.model_id not in trained:
            raise ModelError(f"the item index holds {index.model_id} embeddings, the ranking model was trained on "
                             f"{trained}: retrain the ranking model or re-embed the items")
        if embedder is not None and embedder.model_id != index.model_id:
            raise ModelError(f"query encoder {embedder.model_id} differs from the indexed item embeddings "
                             f"{index.model_id}")
        #: the spec's serving.exclude_interacted (True without a spec)
        self.exclude_interacted = client.spec.serving.exclude_interacted if client.spec is not None else True
        self._popular = np.zeros(0, object if client.key_types["item_id"] == "string" else np.int64)
        self._popular_sig = None
        self._refresh_popular()
        self._stop = threading.Event()
        if cfg.refresh_every_s:
            threading.Thread(target=self._refresh_loop, name="index-refresh", daemon=True).start()

    @classmethod
    def from_config(cls, cfg: ServiceConfig, observe=None, on_cache=None, encoder=None) -> "RecommendService":
        """Build everything from ``cfg`` (loads the ranker, indexes the tables, loads the text encoder).

        Raises:
            ConfigError / StoreError / ModelError / DataError from the parts.
        """
        from recfeast.serving.index import ItemIndex
        from recfeast.serving.query import QueryEmbedder
        from recfeast.serving.ranker import Ranker
        from recfeast.serving.sdk import OnlineFeatureClient

        client = OnlineFeatureClient(cfg.repo, cfg.online_store, cfg.feature_service, cfg.project,
                                     item_cache=cfg.item_cache, item_cache_max_age_s=cfg.item_cache_max_age_s)
        index = ItemIndex(config.tables_dir(Path(client.store.repo_path)) / "item_text_embedding.parquet")
        ranker = Ranker(cfg.checkpoint)
        embedder = None
        if cfg.load_query_encoder:
            embedder = QueryEmbedder(encoder, expected_model_id=index.model_id, on_cache=on_cache)
        return cls(client, index, ranker, embedder, cfg, observe)

    # ---------------------------------------------------------------- refresh
    def refresh(self) -> dict | None:
        """Re-read the tables if they changed: index difference applied, popular items recomputed.

        Raises:
            ModelError: the new embeddings mix models, or moved to one the ranker or the query
                encoder does not know (the old index keeps serving).
        """
        trained = self.ranker.embedding_models.get("text_model")
        before = self.index.model_id
        out = self.index.refresh()
        if out and self.index.model_id != before and (
                (trained and self.index.model_id not in trained)
                or (self.embedder is not None and self.embedder.model_id != self.index.model_id)):
            raise ModelError(f"the item embeddings moved to {self.index.model_id}; the ranking model ({trained}) "
                             "and the query encoder must move with them: restart with matching models")
        self._refresh_popular()
        return out

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.cfg.refresh_every_s):
            try:
                self.refresh()
            except Exception as exc:  # keep serving the last consistent state; /health reports it
                self.last_refresh_error = str(exc)
            else:
                self.last_refresh_error = None

    def close(self) -> None:
        """Stop the background refresh."""
        self._stop.set()

    def _refresh_popular(self) -> None:
        path = config.tables_dir(Path(self.client.store.repo_path)) / "item_content.parquet"
        st = path.stat() if path.is_file() else None
        sig = None if st is None else (st.st_mtime_ns, st.st_size)
        if sig == self._popular_sig:
            return
        col = self._popularity_column()
        rows = latest_item_rows(path, [col])
        rows = rows.sort_values([col, "item_id"], ascending=[False, True], kind="stable", na_position="last")
        ids = rows.item_id.to_numpy(object if self.client.key_types["item_id"] == "string" else np.int64)
        self._popular, self._popular_sig = ids, sig

    def _popularity_column(self) -> str:
        """``popularity`` of the spec's ``item_content`` view, else the primary event type's count."""
        from recfeast.views import view

        spec = self.client.spec
        fields = [f.name for f in view(spec, "item_content").fields] if view(spec, "item_content") else []
        if "popularity" in fields:
            return "popularity"
        return f"{spec.feature_prefix(spec.primary_type())}_count"

    # ---------------------------------------------------------------- requests
    def _now(self, request_ts) -> int:
        """``request_ts`` if given, else the configured ``as_of``, else the clock (unix seconds)."""
        if request_ts is not None:
            return request_ts
        return int(self.cfg.as_of) if self.cfg.as_of is not None else int(time.time())

    @staticmethod
    def _k(k) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
            raise FeatureLookupError(f"k={k!r}: expected an integer from 1 to {MAX_K}")
        return int(k)

    def _timed(self, stage, fn, *args):
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.observe(stage, time.perf_counter() - t)

    def _rank(self, feats, retrieval: dict, k: int, extra: np.ndarray | None = None, weight: float = 0.0,
              scorer=None):
        p = self._timed("rank", scorer or self.ranker.score, feats)
        score = p if extra is None else weight * np.nan_to_num(extra, nan=-1.0) + (1 - weight) * p
        order = np.argsort(-score, kind="stable")[:k]
        ids = _ids(feats.arrays["item_id"])
        items = [{"item_id": ids[i], "score": float(score[i]), "model_score": float(p[i]),
                  "retrieval_score": retrieval.get(ids[i])} for i in order]
        if extra is not None:
            for it, i in zip(items, order):
                it["query_cosine"] = None if np.isnan(extra[i]) else float(extra[i])
        return items

    def _versions(self, feats) -> dict:
        return {"feature_service": feats.feature_service, "online_store": self.client.online_store,
                "request_ts": feats.request_ts, "embedding_models": feats.model_ids(),
                "index": self.index.info(), "ranker": {k: self.ranker.version[k] for k in ("sha256", "checkpoint")},
                "query_encoder": None if self.embedder is None else self.embedder.model_id}

    def user_features(self, user_id, request_ts: int):
        """The user's online row (with one placeholder item), or UnknownUserError when no user
        view of the service has a row for ``user_id``. The reference path's user read
        (:meth:`recommend_reference`); requests use :meth:`_read_user`."""
        if not len(self._popular):
            raise UnknownUserError(f"user_id={user_id!r}: the catalog has no items online")
        feats = self._timed("features", self.client.get_features, user_id, _ids(self._popular[:1]), request_ts)
        user_views = [v.name for v in self.client.views if v.join_key == "user_id"]
        if not any(feats.status[name].iat[0] != "missing" for name in user_views):
            raise UnknownUserError(f"user_id={user_id!r}: no such user in the online store")
        return feats

    def _read_user(self, user_id, request_ts: int):
        """The user's rows and recent items in one round trip (:meth:`OnlineFeatureClient.read_user`),
        or UnknownUserError when no user view of the service has a row for ``user_id``."""
        if not len(self._popular):
            raise UnknownUserError(f"user_id={user_id!r}: the catalog has no items online")
        user = self._timed("features", self.client.read_user, user_id, request_ts)
        if not user.known:
            raise UnknownUserError(f"user_id={user_id!r}: no such user in the online store")
        return user

    def _candidates(self, seq, seen: set, k: int) -> tuple[list, dict]:
        """``(candidate ids, retrieval cosines by id)``: the items nearest ``seq`` (the user's
        sequence embedding, or None), topped up with popular items, none of them in ``seen``."""
        retrieval = {}
        if seq is not None and seq.size and not np.isnan(seq).any():
            ids, sims = self._timed("retrieve", self.index.search, seq, self.cfg.candidates, seen)
            retrieval = dict(zip(_ids(ids), sims.tolist()))
        # popular items (no history yet, or no sequence embedding in this catalog: only them)
        want = self.cfg.popular + len(retrieval) + k if retrieval else max(self.cfg.candidates, k)
        popular = [i for i in _ids(self._popular[:want + len(seen)]) if i not in seen]
        if retrieval:
            cands = list(retrieval) + [i for i in popular if i not in retrieval][:max(self.cfg.popular, k - len(retrieval))]
        else:
            cands = popular[:max(self.cfg.candidates, k)]
        return cands, retrieval

    def recommend(self, user_id, k: int = 10, request_ts: int | None = None) -> dict:
        """Top ``k`` items for ``user_id``.

        Cost: one online-store round trip with the candidates cached (the user's rows of every
        user view, the user's recent items and the load sentinel: one Redis pipeline of one HMGET
        and one GET, or one SQLite statement), plus one for the candidates not cached (one
        pipeline of one HMGET per item, or one statement), which reuses the user's row instead
        of reading it again. The model scores the columnar arrays as read (:meth:`Ranker.score`).

        Args:
            user_id: the user's key, int or str as the catalog spec declares.

        Returns:
            ``{"user_id", "items": [{"item_id", "score", "model_score", "retrieval_score"}],
            "candidates", "excluded", "versions"}``; ``retrieval_score`` is the cosine to the user's
            sequence embedding (None for popularity candidates); ``excluded``: how many items were
            left out as already interacted with (see the module docstring: best effort).

        Raises:
            FeatureLookupError: bad ``user_id``/``k`` (e.g. a string for an int64 key).
            UnknownUserError: user not online. StoreError / ModelError: the store or the model
            versions (see :class:`Ranker`).
        """
        k, user_id = self._k(k), self.client.key(user_id, "user_id")
        ts = self._now(request_ts)
        user = self._read_user(user_id, ts)
        seen = set(user.recent_items) if self.exclude_interacted else set()
        cands, retrieval = self._candidates(user.value("sequence_embedding"), seen, k)
        if not cands:
            return {"user_id": user_id, "items": [], "candidates": 0, "excluded": len(seen),
                    "versions": self._versions(user)}
        # candidates come from the index (the catalog's own keys, at most candidates + popular): not validated again
        feats = self._timed("features", self.client._item_features, user, cands)
        return {"user_id": user_id, "items": self._rank(feats, retrieval, k), "candidates": len(cands),
                "excluded": len(seen), "versions": self._versions(feats)}

    def recommend_reference(self, user_id, k: int = 10, request_ts: int | None = None) -> dict:
        """:meth:`recommend` as it was before the columnar path: three round trips (the user with a
        placeholder item, the recent items, then the user again with the candidates) and the
        DataFrame ranker (:meth:`Ranker.score_frame`). Kept as the reference of the tests and the
        anchor of ``bench.bench_serving --only recommend``; same answer, same errors."""
        k, user_id = self._k(k), self.client.key(user_id, "user_id")
        ts = self._now(request_ts)
        user = self.user_features(user_id, ts)
        seen = set(self.client.recent_items(user_id)) if self.exclude_interacted else set()
        seq = user.arrays.get("sequence_embedding")
        cands, retrieval = self._candidates(None if seq is None else seq[0], seen, k)
        if not cands:
            return {"user_id": user_id, "items": [], "candidates": 0, "excluded": len(seen),
                    "versions": self._versions(user)}
        feats = self._timed("features", self.client.get_features, user_id, cands, ts)
        return {"user_id": user_id, "items": self._rank(feats, retrieval, k, scorer=self.ranker.score_frame),
                "candidates": len(cands), "excluded": len(seen), "versions": self._versions(feats)}

    def search(self, query: str, user_id=None, k: int = 10, request_ts: int | None = None) -> dict:
        """Top ``k`` items for a text query, personalised when ``user_id`` is given.

        Returns:
            ``{"query", "user_id", "items": [{"item_id", "score", "model_score", "retrieval_score",
            "query_cosine"}], "candidates", "cache_hit", "versions"}``.

        Raises:
            FeatureLookupError: empty, overlong or non-string query, bad ``k``/``user_id``; search
                not enabled. UnknownUserError: user not online. StoreError / ModelError.
        """
        from recfeast.serving.ondemand import query_item_cosine
        from recfeast.serving.query import normalize_query

        k = self._k(k)
        normalize_query(query, self.embedder.max_chars if self.embedder else 512)
        if user_id is not None:
            user_id = self.client.key(user_id, "user_id")
        if self.embedder is None:
            raise FeatureLookupError("search is not enabled on this server (started without the query encoder)")
        ts = self._now(request_ts)
        user = None if user_id is None else self._read_user(user_id, ts)
        vec, hit = self._timed("embed_query", self.embedder.embed, query)
        ids, sims = self._timed("retrieve", self.index.search, vec, max(self.cfg.candidates, k))
        if not len(ids):
            return {"query": query, "user_id": user_id, "items": [], "candidates": 0, "cache_hit": hit,
                    "versions": {"index": self.index.info()}}
        if user is None:
            feats = self._timed("features", self.client.get_features, None, _ids(ids), ts)
        else:
            feats = self._timed("features", self.client.get_item_features, user, _ids(ids))
        qcos = query_item_cosine(vec, feats.arrays["text_embedding"])
        items = self._rank(feats, dict(zip(_ids(ids), sims.tolist())), k, qcos, self.cfg.query_weight)
        return {"query": query, "user_id": user_id, "items": items, "candidates": len(ids), "cache_hit": hit,
                "versions": self._versions(feats)}

    def _version_problem(self) -> str | None:
        """What :meth:`Ranker.check_versions` says of a sample of served rows (a user from the
        tables and the popular items), or None when they match the checkpoint."""
        if not hasattr(self, "_sample_user"):
            import pandas as pd

            path = config.tables_dir(Path(self.client.store.repo_path)) / "user_behavior.parquet"
            seq = path.with_name("user_sequence_embedding.parquet")
            try:
                users = pd.read_parquet(seq if seq.is_file() else path, columns=["user_id"])["user_id"]
                self._sample_user = _ids(users.iloc[:1].to_numpy())[0] if len(users) else None
            except Exception:
                self._sample_user = None
        if self._sample_user is None or not len(self._popular):
            return None
        try:
            feats = self.client.get_features(self._sample_user, _ids(self._popular[:5]), self._now(None))
            self.ranker.check_versions(feats)
        except ModelError as exc:
            return f"model versions: {exc}"
        except Exception:
            return None   # store problems are reported above
        return None

    def _load_problems(self) -> tuple[list[str], dict | None]:
        """What :func:`recfeast.health.check` finds in the online store's load sentinel (the sample
        entity of each loaded view read back in one request); ``(problems, sentinel)``.

        Raises:
            StoreError: the store cannot be read.
        """
        from recfeast import health

        reader = self.client.reader
        if not hasattr(reader, "sentinel"):
            return [], None
        sentinel = reader.sentinel()
        missing = []
        if sentinel is not None:
            samples = {v.name: (v, (sentinel["views"].get(v.name) or {}).get("sample")) for v in self.client.views}
            samples = {n: (v, s) for n, (v, s) in samples.items() if s and s.get("join_key") == v.join_key}
            if samples:
                keys: dict[str, list[int]] = {}
                for v, s in samples.values():
                    keys.setdefault(v.join_key, []).append(int(s["id"]))
                rows = reader.read(keys, [v for v, _ in samples.values()])
                missing = [n for n, (v, s) in samples.items()
                           if not rows[n].present[keys[v.join_key].index(int(s["id"]))]]
        tables = config.tables_dir(Path(self.client.store.repo_path))
        return health.check(sentinel, tables, self.cfg.health_max_lag_s, missing_samples=missing), sentinel

    def health(self) -> dict:
        """``{"status": "ok"|"degraded"|"unavailable", "online_store", "online_load", "index", "ranker",
        "query_cache", "item_cache", "detail"}``: reads one user row to prove the store answers, then the load
        sentinel (:mod:`recfeast.health`): an empty, flushed, partly evicted or stale store is
        ``degraded`` with the reason in ``detail``."""
        detail = getattr(self, "last_refresh_error", None)
        status = "ok" if detail is None else "degraded"
        sentinel = None
        try:
            probe = "" if self.client.key_types["user_id"] == "string" else 0
            user_views = [v for v in self.client.views if v.join_key == "user_id"][:1]
            self.client.reader.read({"user_id": [probe]}, user_views)
            problems, sentinel = self._load_problems()
        except Exception as exc:
            status, detail = "unavailable", f"online store: {exc}"
        else:
            problem = "; ".join(problems) if problems else self._version_problem()
            if problem:   # an emptied or stale store; a promoted encoder the checkpoint was not trained on
                status, detail = "degraded", problem
        load = None if sentinel is None else {"loaded_at": sentinel.get("loaded_at"),
                                              "rows": {v: r.get("rows") for v, r in sentinel["views"].items()}}
        return {"status": status, "online_store": self.client.online_store, "online_load": load,
                "index": self.index.info(), "ranker": self.ranker.version, "detail": detail,
                "query_cache": None if self.embedder is None else self.embedder.cache_info(),
                "item_cache": None if self.client.item_cache is None else self.client.item_cache.info()}


def _ids(arr) -> list:
    """Item or user ids as plain Python values (int or str), in order."""
    return [v if isinstance(v, str) else int(v) for v in arr]
