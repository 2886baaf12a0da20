"""The main job: read -> clean -> select -> encode -> feature tables -> feast apply -> materialize.

``recfeast materialize`` is a thin wrapper over :func:`run`. The job is idempotent: a rerun on the
same input writes the same tables (unchanged rows keep their ``created_timestamp``; embeddings whose
input and model did not change are reused, not recomputed) and writes the same values online.
"""

from __future__ import annotations

import hashlib
import time
from functools import partial
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from recfeast import config
from recfeast.eventlog import with_logged_events
from recfeast.materialize import engine as engines
from recfeast.materialize import features as F
from recfeast import model_registry as registry
from recfeast.materialize.embedding_cache import EmbeddingCache, cached_encode
from recfeast.schema import FIELD_NULLED

#: tables rebuilt by each part of the job (the scheduler runs the parts as separate jobs)
PARTS = {
    "embeddings": ("item_text_embedding", "item_image_embedding"),
    "aggregates": ("item_content", "user_profile", "user_behavior", "user_sequence_embedding", "user_realtime"),
}
TABLES = PARTS["embeddings"] + PARTS["aggregates"]


@dataclass
class JobConfig:
    """Settings of one run of the main job."""

    data_dir: Path                      # raw input folder, read as the repository's catalog.yaml says
    repo: Path | None = None            # feature repository; default recfeast.config.repo_path()
    online_store: str | None = None     # sqlite | redis; default $RECFEAST_ONLINE_STORE or sqlite
    project: str | None = None          # override feature_store.yaml's project (tests)
    image_backbone: str | None = None   # default the spec's items.image.encoder (resnet18/50 need local weights)
    image_weights: Path | None = None   # local weights file for the image backbone
    text_batch_size: int = 64           # texts per forward pass
    image_batch_size: int = 32          # images per forward pass
    sequence_max_len: int | None = None  # N: items read by the sequence encoder; default the spec's
    min_enrichment_confidence: float | None = None  # override the spec's items.trust.min
    apply: bool = True                  # run feast apply after writing the tables
    materialize: bool = True            # load the online store after apply
    progress: bool = True               # progress bars and stage lines
    parts: tuple[str, ...] = ("embeddings", "aggregates")  # which tables to rebuild (see PARTS)
    text_model: str | None = None       # registered text model id; default the registry's production one
    sequence_model: str | None = None   # registered sequence model id; default production (or seeded GRU)
    engine: object = "local"            # where encoding and the online load run: local | ray | an Engine
    ray_address: str | None = None      # Ray cluster for engine="ray"; default $RAY_ADDRESS or a local one


@dataclass
class JobSummary:
    """What a run did: rows per table, quarantined rows per rule, seconds per stage."""

    tables: dict[str, dict] = field(default_factory=dict)
    quarantine: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    embeddings: dict[str, dict] = field(default_factory=dict)   # per encoder: computed vs reused (cache)
    selection: dict = field(default_factory=dict)
    online_store: str = ""
    tables_dir: str = ""

    def render(self) -> str:
        """Human-readable summary (plain text table)."""
        loaded = any("loaded_online" in t for t in self.tables.values())
        lines = [f"tables in {self.tables_dir} (online store: {self.online_store or 'not loaded'})",
                 f"  {'table':<26}{'rows':>9}{'new/changed':>13}{'unchanged':>11}"
                 + (f"{'loaded online':>15}" if loaded else "")]
        for name, t in self.tables.items():
            online_col = (f"{t['loaded_online']:>15}" if "loaded_online" in t else f"{'pushed':>15}") if loaded else ""
            lines.append(f"  {name:<26}{t.get('rows', 0):>9}{t.get('new_or_changed', 0):>13}{t.get('unchanged', 0):>11}"
                         + online_col)
        if loaded:
            lines.append("  (loaded online: entities written by this load, each table's latest row per key"
                         + ("; user_realtime is pushed by the ingest path)" if "user_realtime" in self.tables else ")"))
        lines.append("quarantined (table/rule: rows)")
        lines += [f"  {k:<40}{v:>7}" for k, v in self.quarantine.items()] or ["  none"]
        sel = "; ".join(f"{name} {len(v['kept'])} kept" + (f", dropped {', '.join(map(str, list(v['dropped'])[:5]))}"
                                                          + (" ..." if len(v["dropped"]) > 5 else "") if v["dropped"] else "")
                        for name, v in self.selection.items()) or "no categorical fields"
        lines.append(f"feature selection: {sel}")
        lines.append("models: " + ", ".join(f"{k}={v}" for k, v in self.models.items()))
        lines.append("embeddings: " + ", ".join(f"{k} {e['computed']} computed / {e['reused']} reused"
                                                for k, e in self.embeddings.items()))
        lines.append("seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items())
                     + f" (total {sum(self.seconds.values()):.1f})")
        return "\n".join(lines)


def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text if isinstance(text, bytes) else text.encode("utf-8")).hexdigest()[:16]


def _file_hash(path) -> str:
    try:
        return _sha(Path(path).read_bytes()) if path else "none"
    except OSError:
        return f"unreadable:{path}"


def _encode_images(cfg: JobConfig, spec, items: pd.DataFrame, out_dir: Path, cache_dir: Path, q,
                   summary: "JobSummary", eng=None) -> tuple[np.ndarray, list[str], str]:
    """Poster embeddings ``(n_items, dim)`` float32 (NaN rows: no usable image, quarantined), the
    input hashes and the model identity; posters whose bytes were embedded before by the same model
    come from the embedding cache."""
    from recfeast.config import encoder_precision
    from recfeast.encoders import ImageEncoder

    make_encoder = partial(ImageEncoder, cfg.image_backbone or spec.items.image.encoder, cfg.image_weights,
                           precision=encoder_precision("image"))
    img_enc = make_encoder()
    ids, paths = items["item_id"].to_numpy(), items["image_path"].tolist()
    errors: dict[int, tuple[str, str]] = {i: ("image_missing", "no image path") for i, p in enumerate(paths) if p is None}
    # a templated path whose file does not exist is missing, not a failed decode: never sent to the encoder
    errors.update({i: ("image_missing", f"{p}: no such file") for i, p in enumerate(paths)
                   if p is not None and not Path(p).is_file()})
    has = [i for i, p in enumerate(paths) if i not in errors]
    hashes = [_file_hash(p) for p in paths]

    def encode_images(pos):   # positions within ``has``
        res = (eng or engines.LocalEngine()).encode(
            make_encoder, [paths[has[i]] for i in pos],
            cfg.image_batch_size, local=img_enc, model_id=img_enc.model_id, progress=cfg.progress)
        errors.update({has[pos[j]]: e for j, e in res.errors.items()})
        return res.embeddings

    cache = EmbeddingCache(cache_dir, img_enc.model_id, img_enc.dim,
                           (out_dir / "item_image_embedding.parquet", "image_embedding", "image_model"))
    emb = np.full((len(paths), img_enc.dim), np.nan, dtype=np.float32)
    emb[has], reused, computed = cached_encode(cache, [hashes[i] for i in has], encode_images)
    cache.save()
    summary.embeddings["image"] = {"computed": computed, "reused": reused}
    first_error = {hashes[i]: e for i, e in errors.items()}
    for i in has:   # items sharing a failed file (encoded once) get its error too
        if np.isnan(emb[i]).any() and i not in errors and hashes[i] in first_error:
            errors[i] = first_error[hashes[i]]
    for i, (rule, detail) in sorted(errors.items()):
        if rule == "image_missing" and items["enrichment_dropped"].iat[i]:
            continue  # already quarantined as low_enrichment_confidence
        q.add("items", rule, FIELD_NULLED, ids[i], items["source"].iat[i], detail + "; no image embedding")
    return emb, hashes, img_enc.model_id


def _write_table(name: str, table: pd.DataFrame, out_dir: Path, run_ts: pd.Timestamp, spec) -> dict:
    """Write one feature table atomically; returns its row counts (see ``io.write_feature_table``)."""
    from recfeast import io
    from recfeast.materialize import online

    path = out_dir / f"{name}.parquet"
    if name == "user_realtime":
        # pushed online by the ingest path, never loaded from this table: no stale tracking
        if not len(table):
            from recfeast.materialize.realtime import arrow_schema

            schema = arrow_schema()
            io.atomic_write_bytes(path, lambda p: pq.write_table(schema.empty_table(), p))
            return {"rows": 0, "new_or_changed": 0, "unchanged": 0}
        on_stale = None
    else:
        on_stale = lambda ids: online.add_pending(out_dir, name, ids)  # noqa: E731
    from recfeast.views import view

    v = view(spec, name)
    key = v.key
    vec_cols = [f.name for f in v.fields if f.dtype == "vector"]
    # created_timestamp = when a value became available: the time of the last event behind it (its
    # event_timestamp; an item's availability for embeddings, versioned by their *_model column);
    # a value that changes an existing row later is a correction stamped with the run time
    info = io.write_feature_table(table, path, [key, "event_timestamp"], run_ts, vec_cols, on_stale=on_stale,
                                  available="event_timestamp",
                                  version_cols=[c for c in table.columns if c.endswith("_model")])
    info.pop("stale_entities")
    return info


class _Stages:
    def __init__(self, progress: bool):
        self.progress, self.seconds, self._n = progress, {}, 0

    def __call__(self, name: str):
        stages = self

        class _Ctx:
            def __enter__(self):
                stages._n += 1
                if stages.progress:
                    print(f"[{stages._n}] {name} ...", flush=True)
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                stages.seconds[name] = round(time.perf_counter() - self.t, 2)
        return _Ctx()


def run(cfg: JobConfig) -> JobSummary:
    """Run the main job for the repository's catalog spec under its ``tables`` lock; see the module docstring.

    One writer at a time: the scheduled jobs and model promotion take the same lock
    (:func:`recfeast.materialize.schedule.job_lock`), so a second ``recfeast materialize`` on one
    repository waits (saying so on stderr, with the holder's pid) and then runs, instead of both
    rewriting the tables and the Feast registry at once.
    """
    import sys

    from recfeast.materialize.schedule import job_lock

    repo = config.repo_path(cfg.repo)

    def say(pid):
        print(f"recfeast: waiting for the tables lock of {repo} (held by pid {pid}: another materialize, a scheduled "
              "job or a model promotion); this run starts when it is released", file=sys.stderr, flush=True)

    with job_lock(repo, "tables", wait=True, on_wait=say, reentrant=True):
        return _run_locked(cfg)


def _run_locked(cfg: JobConfig) -> JobSummary:
    """Run the main job (the caller holds the tables lock); see the module docstring.

    Raises:
        ConfigError: bad paths, settings or catalog spec. DataError: the input folder is unusable.
        ModelError: an encoder cannot be loaded. StoreError: Feast apply/materialize failed.
        Bad rows never raise: they are quarantined (``quarantine.parquet``) and counted.
    """
    from recfeast import io, store
    from recfeast.adapters import read_catalog
    from recfeast.cleaning import clean
    from recfeast.errors import ConfigError
    from recfeast.spec import load_spec, spec_path
    from recfeast.views import feature_views

    data_dir = config.data_dir(cfg.data_dir)
    repo = config.repo_path(cfg.repo)
    spec = load_spec(spec_path(repo))
    views = {v.name: v for v in feature_views(spec)}
    out_dir = config.tables_dir(repo)
    cache_dir = repo / "data" / "embedding_cache"
    run_ts = pd.Timestamp.now(tz="UTC")
    stage = _Stages(cfg.progress)
    summary = JobSummary(tables_dir=str(out_dir))
    seq_len = cfg.sequence_max_len or spec.features.sequence.length

    unknown = set(cfg.parts) - set(PARTS)
    if unknown or not cfg.parts:
        raise ConfigError(f"JobConfig.parts={cfg.parts!r}: expected one or more of {sorted(PARTS)}")
    eng = engines.get(cfg.engine, cfg.ray_address)
    with stage("read"):
        catalog = read_catalog(data_dir, spec)
    with stage("clean"):
        data = clean(catalog, cfg.min_enrichment_confidence, spec=spec)
        items, users, q = data.items, data.users, data.quarantine
        events = with_logged_events(data.events, items, repo, q, cfg.project) if spec.realtime else data.events
        seq_events = events[events["action"].isin(spec.sequence_types())]

    with stage("select features"):
        vocabs = F.select_vocabularies(items, spec)
        summary.selection = vocabs

    ids = items["item_id"].to_numpy()
    texts = F.item_text(items)
    text_emb = None
    if "item_text_embedding" in views:
        with stage("encode text"):
            text_enc = registry.text_encoder(repo, cfg.text_model)
            cache = EmbeddingCache(cache_dir, text_enc.model_id, text_enc.dim,
                                   (out_dir / "item_text_embedding.parquet", "text_embedding", "text_model"))
            text_emb, reused, computed = cached_encode(
                cache, [_sha(t) for t in texts],
                lambda pos: eng.encode(partial(registry.text_encoder, repo, cfg.text_model), [texts[i] for i in pos],
                                       cfg.text_batch_size, local=text_enc, model_id=text_enc.model_id, progress=cfg.progress))
            cache.save()
            summary.models["text"] = text_enc.model_id
            summary.embeddings["text"] = {"computed": computed, "reused": reused}

    if "embeddings" in cfg.parts and "item_image_embedding" in views:
        with stage("encode images"):
            img_emb, img_hashes, summary.models["image"] = _encode_images(cfg, spec, items, out_dir, cache_dir, q, summary, eng)

    rt = None
    if "aggregates" in cfg.parts and "user_sequence_embedding" in views:
        with stage("encode sequences"):
            seq_enc = registry.sequence_encoder(repo, text_enc.dim, seq_len, cfg.sequence_model)
            hist = F.user_histories(seq_events, seq_len)
            row_of = {k: i for i, k in enumerate(ids.tolist())}
            seq_emb = seq_enc.encode([text_emb[[row_of[i] for i in h]] for h in hist["item_ids"]])
            summary.models["sequence"] = seq_enc.model_id
        if "user_realtime" in views:
            with stage("real-time features from the event log"):
                from recfeast.eventlog import logged_events
                from recfeast.materialize import realtime

                rt = realtime.offline_table(logged_events(repo, ("seq", "user_id", "item_id", "ts_us"), project=cfg.project),
                                            realtime.ItemEmbeddings.from_arrays(ids, text_emb, text_enc.model_id),
                                            seq_enc, realtime.RealtimeConfig(seq_len=seq_len))

    with stage("build tables"):
        avail = F.item_available_from(items, events).to_numpy()
        tables, stats = {}, {}
        if "embeddings" in cfg.parts:
            if text_emb is not None:
                tables["item_text_embedding"] = pd.DataFrame({
                    "item_id": ids, "event_timestamp": pd.to_datetime(avail, utc=True), "text_embedding": list(text_emb),
                    "text_model": text_enc.model_id, "content_hash": [_sha(t) for t in texts]})
            if "item_image_embedding" in views:
                ok = ~np.isnan(img_emb).any(axis=1)
                tables["item_image_embedding"] = pd.DataFrame({
                    "item_id": ids[ok], "event_timestamp": pd.to_datetime(avail[ok], utc=True), "image_embedding": list(img_emb[ok]),
                    "image_model": summary.models["image"], "content_hash": np.asarray(img_hashes, dtype=object)[ok]})
        if "aggregates" in cfg.parts:
            tables["item_content"], stats = F.build_item_content(items, events, spec, vocabs)
            if "user_profile" in views:
                tables["user_profile"], user_stats = F.build_user_profile(users, events, spec)
                stats.update(user_stats)
            tables["user_behavior"] = F.build_user_behavior(events, items, spec, vocabs)
            if "user_sequence_embedding" in views:
                tables["user_sequence_embedding"] = pd.DataFrame({
                    "user_id": hist["user_id"].to_numpy(), "event_timestamp": hist["event_timestamp"].to_numpy(),
                    "sequence_embedding": list(seq_emb), "sequence_length": hist["item_ids"].map(len).astype("int64"),
                    # the vectors live in the space of the text model they read: both identities name it
                    "sequence_model": f"{seq_enc.model_id}|{text_enc.model_id}"})
            if rt is not None:
                tables["user_realtime"] = rt

    with stage("write tables"):
        io.remove_stale_temp_files(out_dir)
        for name, table in tables.items():
            summary.tables[name] = {**summary.tables.get(name, {}), **_write_table(name, table, out_dir, run_ts, spec)}
        if "embeddings" not in cfg.parts and (out_dir / "quarantine.parquet").is_file():
            # image rules come from the embeddings part: keep its records when it did not run
            old_q = pd.read_parquet(out_dir / "quarantine.parquet")
            q.rows += old_q[old_q["rule"].str.startswith("image_")].to_dict("records")
        qf = q.frame()
        io.atomic_write_bytes(out_dir / "quarantine.parquet", lambda p: qf.to_parquet(p, index=False))
        if stats:
            io.write_json(out_dir / "normalization.json", stats)
        io.write_json(out_dir / "feature_selection.json", summary.selection)
        summary.quarantine = q.counts()

    if cfg.apply:
        with stage("feast apply"):
            fs = store.feature_store(repo, cfg.online_store, cfg.project)
            store.apply(fs)
        if cfg.materialize:
            with stage("feast materialize"):
                eng.load_online(fs, out_dir, quiet=not cfg.progress)
                summary.online_store = fs.config.online_store.type
                from recfeast.materialize import online

                for name, n in online.loaded_entities(fs, out_dir).items():
                    summary.tables.setdefault(name, {})["loaded_online"] = n
    if eng is not cfg.engine:
        eng.close()
    summary.seconds = stage.seconds
    io.write_json(out_dir / "run_summary.json", {**asdict(summary), "run_at": run_ts.isoformat(),
                                                 "data_dir": str(data_dir), "catalog": spec.name})
    return summary
