"""Model registry: trained encoders with their identity, metrics and lineage; one production
version per kind; the Feast project that serves it. Stored in MLflow's model registry.

MLflow (:mod:`recfeast.mlflow_store`: ``<repo>/data/mlflow.db`` by default, ``MLFLOW_REGISTRY_URI`` /
``MLFLOW_TRACKING_URI`` for a server) holds:

- one registered model per kind, ``recfeast-text``, ``recfeast-sequence`` and ``recfeast-ranking``
  (the image encoder is the packaged EfficientNet-Lite0: nothing trains another); each registered
  version is a model version whose ``source`` is the artefact's copy under
  ``<repo>/data/models/<kind>/<hash>/`` (registered by path) and whose tags carry recfeast's
  identity (``recfeast.model_id`` = ``name@sha256:...``), metrics, lineage, config, and flattened
  numeric metrics (``metric.<a/b>``) that MLflow's UI shows;
- ``recfeast-serving``: one version per promotion, tagged with the production ids of every kind,
  the Feast serving project and the history record. Its alias ``production`` is THE switch: moving
  one alias is one database write, so production versions and serving project change together;
- the alias ``production`` on each kind's model mirrors the switch (set right after it) for people
  and tools that look there. recfeast reads production only from ``recfeast-serving``.

:func:`load` returns the registry in the shape of the former ``registry.json``::

    {"models": [{"kind": "text", "model_id": "name@sha256:...", "path": "text/<hash>", "metrics": {...},
                 "lineage": {...}, "config": {...}, "registered_at": "...", "version": "1"}],
     "production": {"text": "name@sha256:...", "sequence": null},
     "serving_project": "recfeast_3f2a9c01",
     "history": [{"from": {...}, "to": {...}, "at": "...", "models": {...}}]}

An existing ``<repo>/data/models/registry.json`` (the registry before MLflow) is imported on first
use and renamed ``registry.json.imported``. Artefacts are copied under the identity at
registration, so a registered version cannot change under its identity. Without a production
entry, a kind uses its built-in default: the packaged all-MiniLM-L6-v2 for text, the seeded
(untrained) GRU for sequences.

Promotion (:mod:`recfeast.materialize.rollout`) computes and loads the new version's features into
a Feast project of their own before it moves the switch (:func:`switch`), so no reader ever sees
two embedding spaces mixed; see there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

from recfeast.errors import ConfigError, ModelError

KINDS = ("text", "sequence")    # encoders with a production version (served, promoted)
#: what can be registered: the encoders and the ranking model (``recfeast train``'s checkpoint; the
#: ranking model has no production alias: a server loads the checkpoint it is given)
REGISTRABLE = KINDS + ("ranking",)
DEFAULT = "default"   # names the built-in version of a kind (packaged MiniLM, seeded GRU)
REGISTRY = "registry.json"   # the registry before MLflow: imported once
SERVING = "recfeast-serving"
ALIAS = "production"
TAG = "recfeast."


def model_name(kind: str) -> str:
    """The MLflow registered model of ``kind``: ``recfeast-<kind>``."""
    return f"recfeast-{kind}"


def models_dir(repo: Path) -> Path:
    """``<repo>/data/models``."""
    return Path(repo) / "data" / "models"


def _empty() -> dict:
    return {"models": [], "production": {k: None for k in KINDS}, "serving_project": None, "history": []}


def _read_json_registry(path: Path) -> dict:
    """The registry.json of recfeast before MLflow, checked.

    Raises:
        ConfigError: not JSON, or not the expected shape.
    """
    try:
        reg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); fix it, or move it away and register the models "
                          "again (their artefacts are kept beside it)") from exc
    ok = (isinstance(reg, dict) and isinstance(reg.get("models"), list) and isinstance(reg.get("production"), dict)
          and all(isinstance(m, dict) and {"kind", "model_id", "path"} <= set(m) for m in reg["models"]))
    if not ok:
        raise ConfigError(f"{path}: expected {{'models': [{{'kind', 'model_id', 'path', ...}}], 'production': "
                          "{...}, 'serving_project': ...}; fix it, or move it away and register the models again")
    reg.setdefault("history", [])
    reg.setdefault("serving_project", None)
    return reg


def _uses_default_backend() -> bool:
    from recfeast import mlflow_store

    return not any(os.environ.get(v, "").strip() for v in (mlflow_store.TRACKING_ENV, mlflow_store.REGISTRY_ENV))


def _client(repo: Path):
    """The MLflow client of ``repo``'s registry, after importing a registry.json left from before.

    Raises:
        StoreError: the registry backend cannot be reached.
    """
    from recfeast import mlflow_store
    from recfeast.errors import StoreError

    try:
        c = mlflow_store.client(repo)
        c.search_registered_models(max_results=1)
    except Exception as exc:
        from recfeast.redact import redact

        raise StoreError(redact(f"MLflow model registry of {repo} unreachable: {type(exc).__name__}: {exc}")) from exc
    legacy = models_dir(repo) / REGISTRY
    if legacy.is_file():
        _import(repo, c, _read_json_registry(legacy))
        os.replace(legacy, legacy.with_name(REGISTRY + ".imported"))
    return c


def _ensure_model(c, name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException:
        try:
            c.create_registered_model(name, tags={"recfeast.managed": "true"}, description=description)
        except MlflowException:
            c.get_registered_model(name)   # created meanwhile: fine; anything else raises here


def _versions(c, name: str) -> list:
    """Every version of registered model ``name``, oldest first (none when it does not exist)."""
    vs = list(c.search_model_versions(f"name='{name}'", max_results=10000))
    return sorted(vs, key=lambda v: int(v.version))


def _json_tag(tags: dict, key: str, default=None):
    raw = tags.get(TAG + key)
    return default if raw is None else json.loads(raw)


def _entry_of(mv) -> dict:
    t = mv.tags
    return {"kind": t[TAG + "kind"], "model_id": t[TAG + "model_id"], "name": t.get(TAG + "name"),
            "path": t[TAG + "path"], "metrics": _json_tag(t, "metrics", {}), "lineage": _json_tag(t, "lineage", {}),
            "config": _json_tag(t, "config", {}), "registered_at": t.get(TAG + "registered_at"),
            "version": str(mv.version)}


def _metric_tags(metrics: dict) -> dict[str, str]:
    """Numeric metrics as tags ``metric.<a/b>`` (MLflow's registry has no metrics of its own; ``@``
    becomes ``_at_``, MLflow's names allow no ``@``)."""
    out = {}

    def walk(path, v):
        if isinstance(v, bool) or v is None:
            return
        if isinstance(v, (int, float)):
            out["metric." + re.sub(r"[^\w\-. :/]", "_", path.replace("@", "_at_"))] = f"{v:.6g}"
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(f"{path}/{k}" if path else str(k), x)
        elif isinstance(v, list) and all(isinstance(x, dict) and "method" in x for x in v):
            for x in v:
                walk(f"{path}/{x['method']}", {k: y for k, y in x.items() if k != "method"})

    walk("", metrics or {})
    return dict(list(out.items())[:100])


def _add_version(c, repo: Path, e: dict) -> dict:
    """Record entry ``e`` (its artefact already under ``models_dir``) as a version of its kind's model."""
    _ensure_model(c, model_name(e["kind"]), f"recfeast {e['kind']} model versions"
                  + (f"; alias '{ALIAS}' = served" if e["kind"] in KINDS else ""))
    js = lambda v: json.dumps(v, default=str)  # noqa: E731
    tags = {TAG + "kind": e["kind"], TAG + "model_id": e["model_id"], **({TAG + "name": e["name"]} if e.get("name") else {}),
            TAG + "path": str(e["path"]), TAG + "registered_at": e.get("registered_at") or _now(),
            TAG + "metrics": js(e.get("metrics") or {}), TAG + "lineage": js(e.get("lineage") or {}),
            TAG + "config": js(e.get("config") or {}), **_metric_tags(e.get("metrics") or {})}
    stored = (models_dir(repo) / e["path"]).resolve()
    mv = c.create_model_version(model_name(e["kind"]), source=(stored if stored.is_dir() else stored.parent).as_uri(),
                                tags=tags, description=f"{e['model_id']}")
    return _entry_of(c.get_model_version(mv.name, mv.version))


def _import(repo: Path, c, reg: dict) -> None:
    """Bring a registry.json into MLflow (idempotent: ids already there are skipped)."""
    have = {(m["kind"], m["model_id"]) for kind in REGISTRABLE for m in map(_entry_of, _versions(c, model_name(kind)))}
    for m in reg["models"]:
        if m["kind"] in REGISTRABLE and (m["kind"], m["model_id"]) not in have:
            _add_version(c, repo, m)
            have.add((m["kind"], m["model_id"]))
    prod = {k: reg["production"].get(k) for k in KINDS}
    if any(prod.values()) or reg.get("serving_project") or reg.get("history"):
        switch(repo, prod, reg.get("serving_project"), reg.get("history") or [], client=c)


def load(repo: Path) -> dict:
    """The registry, read from MLflow (an empty one when nothing was registered).

    Raises:
        ConfigError: a registry.json to import is broken. StoreError: MLflow is unreachable.
    """
    if not _has_registry(repo):
        return _empty()
    c = _client(repo)
    reg = _empty()
    for kind in REGISTRABLE:
        reg["models"] += [_entry_of(v) for v in _versions(c, model_name(kind))]
    versions = _versions(c, SERVING)
    for v in versions:
        reg["history"] += _json_tag(v.tags, "history", [])
    cur = _serving_version(c)
    if cur is not None:
        reg["production"] = {k: _json_tag(cur.tags, "production", {}).get(k) for k in KINDS}
        reg["serving_project"] = cur.tags.get(TAG + "serving_project") or None
    return reg


def _has_registry(repo: Path) -> bool:
    """False when there is certainly nothing registered (default backend missing or without a
    registered model, no registry.json): then nothing needs MLflow, which costs seconds to import
    (``recfeast.store`` asks for the serving project on every store it builds)."""
    from recfeast import mlflow_store

    if not _uses_default_backend() or (models_dir(repo) / REGISTRY).is_file():
        return True
    db = mlflow_store.db_path(repo)
    if not db.is_file():
        return False
    import sqlite3   # runs only (tracking creates the database too): no registered model, no MLflow import

    try:
        with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT 1 FROM registered_models LIMIT 1").fetchone() is not None
    except sqlite3.Error:
        return True


def _serving_version(c):
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(SERVING, ALIAS)
    except MlflowException:
        return None


def switch(repo: Path, production: dict, serving_project: str | None, history: list | dict, client=None) -> None:
    """Make ``production`` (``{kind: model_id or None}``) and ``serving_project`` current together:
    a new version of ``recfeast-serving`` carrying both, then its alias ``production`` moved to it in
    one write; then each kind's ``production`` alias is set to mirror it (or removed: built-in default).

    Raises:
        ConfigError: a production id is not registered.
    """
    from mlflow.exceptions import MlflowException

    c = client or _client(repo)
    by_id = {k: {e["model_id"]: e for e in map(_entry_of, _versions(c, model_name(k)))} for k in KINDS}
    for k in KINDS:
        if production.get(k) and production[k] not in by_id[k]:
            raise ConfigError(f"no {k} model {production[k]!r} in the registry of {repo}; "
                              f"registered: {list(by_id[k]) or 'none'}")
    _ensure_model(c, SERVING, f"what recfeast serves: production ids and Feast project; alias '{ALIAS}' = current")
    hist = history if isinstance(history, list) else [history]
    prod = {k: production.get(k) for k in KINDS}
    mv = c.create_model_version(SERVING, source=models_dir(repo).resolve().as_uri(), description=(
        f"serving project {serving_project or '(feature_store.yaml)'}: " + ", ".join(f"{k}={v or DEFAULT}" for k, v in prod.items())),
        tags={TAG + "production": json.dumps(prod), TAG + "serving_project": serving_project or "",
              TAG + "history": json.dumps(hist, default=str), TAG + "at": _now(),
              **{TAG + f"production.{k}": v or DEFAULT for k, v in prod.items()}})
    c.set_registered_model_alias(SERVING, ALIAS, mv.version)          # the switch
    for k in KINDS:
        if prod[k]:
            c.set_registered_model_alias(model_name(k), ALIAS, by_id[k][prod[k]]["version"])
        else:
            try:
                c.delete_registered_model_alias(model_name(k), ALIAS)
            except MlflowException:
                pass


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def identity_of(kind: str, path: Path, name: str | None = None) -> str:
    """Load the artefact at ``path`` and return its model identity.

    Raises:
        ModelError: the artefact cannot be loaded as a ``kind`` encoder.
    """
    if kind == "text":
        from recfeast.encoders.text import TextEncoder

        return TextEncoder(path, name=name).model_id
    if kind == "sequence":
        from recfeast.encoders.sequence import SequenceEncoder

        return SequenceEncoder.load(path).model_id
    if kind == "ranking":
        from recfeast.encoders.identity import model_identity
        from recfeast.ranking.checkpoint import load_checkpoint

        try:
            model, _, ckpt = load_checkpoint(path)
        except Exception as exc:
            raise ModelError(f"{path}: not a ranking checkpoint of `recfeast train` ({type(exc).__name__}: {exc})") from exc
        return model_identity("ranking-mlp", model.state_dict(), {
            "features": ckpt["features"], "spec": ckpt["spec"], "embedding_models": ckpt["embedding_models"],
            "normalization": ckpt["normalization"], "feature_selection": ckpt.get("feature_selection")})
    raise ConfigError(f"kind={kind!r}: expected one of {REGISTRABLE}")


def _training_record(artefact: Path, kind: str | None = None) -> dict:
    """What the training run wrote beside the artefact, as ``{config, metrics, lineage}``:
    ``finetune.json`` inside a text model folder (``recfeast finetune text``), or ``metrics.json``
    beside a sequence checkpoint (``recfeast finetune sequence``; its item-embedding model becomes
    ``lineage.text_model``: the text space the sequence encoder was trained on)."""
    path = artefact / "finetune.json" if artefact.is_dir() else artefact.with_name("metrics.json")
    if not path.is_file():
        return {}
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: the training record beside the model is not valid JSON ({exc})") from exc
    if not isinstance(m, dict):
        raise ConfigError(f"{path}: expected a JSON object (config, metrics, lineage)")
    if artefact.is_dir():
        return m
    if kind == "ranking":                              # recfeast train's metrics.json
        info = m.get("training_set") or {}
        return {"config": {}, "metrics": {"test": m.get("test"), "lift_over_behavior_only": m.get("lift_over_behavior_only")},
                "lineage": {"feature_service": info.get("feature_service"), "embedding_models": info.get("model_ids"),
                            "training_set": {k: info.get(k) for k in ("rows", "rows_by_split", "time_range")},
                            "protocol": m.get("protocol")}}
    return {"config": m.get("config", {}),
            "metrics": {"test": m.get("test"), "diff": m.get("diff"), "best_epoch": m.get("best_epoch")},
            "lineage": {"text_model": m.get("item_embedding_model"), "data": m.get("data"),
                        "untrained_model_id": m.get("untrained_model_id")}}


def _check_tokenizer(folder: Path) -> None:
    """Refuse a text model folder whose tokenizer does not fit the model (transformers would build a
    tiny tokenizer from nothing and every text would embed alike).

    Raises:
        ModelError: no tokenizer files, or a vocabulary of another size than the model's.
    """
    import json as _json

    if not folder.is_dir() or not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        raise ModelError(f"{folder}: no tokenizer (tokenizer.json or vocab.txt): save it with the model")
    from transformers import AutoTokenizer

    cfg = _json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if cfg.get("vocab_size") and len(tok) > int(cfg["vocab_size"]) or len(tok) < 1000:
        raise ModelError(f"{folder}: tokenizer of {len(tok)} tokens for a model of {cfg.get('vocab_size')}")


def register(repo: Path, kind: str, artefact: Path, metrics: dict | None = None, lineage: dict | None = None,
             config: dict | None = None, name: str | None = None) -> dict:
    """Copy a trained encoder into the registry and record it (idempotent: registering the same
    weights again returns the existing entry).

    Args:
        kind: ``text`` (a transformers folder), ``sequence`` (a :meth:`SequenceEncoder.save` file) or
            ``ranking`` (``recfeast train``'s ``ranking_model.pt``).
        artefact: the folder or file a fine-tuning run wrote.
        name: model name for a text model's identity (default: ``finetune.json``'s, else the folder's).

    Returns:
        The registry entry.

    Raises:
        ConfigError: unknown kind or missing artefact. ModelError: it does not load.
    """
    if kind not in REGISTRABLE:
        raise ConfigError(f"kind={kind!r}: expected one of {REGISTRABLE}")
    artefact = Path(artefact)
    if not artefact.exists():
        raise ConfigError(f"{artefact}: no such model artefact")
    meta = _training_record(artefact, kind)
    if kind == "text":
        name = name or (meta.get("config") or {}).get("name") or artefact.name
        _check_tokenizer(artefact)
    model_id = identity_of(kind, artefact, name)
    c = _client(repo)
    for m in map(_entry_of, _versions(c, model_name(kind))):
        if m["model_id"] == model_id:
            return m
    rel = Path(kind) / model_id.rsplit(":", 1)[-1]
    dest = models_dir(repo) / rel
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if artefact.is_dir():
        shutil.copytree(artefact, tmp)
    else:
        tmp.mkdir()
        shutil.copy(artefact, tmp / "model.pt")
        manifest = artefact.with_name(artefact.name + ".json")   # a ranking checkpoint's manifest (tensors' sha256)
        if manifest.is_file():
            shutil.copy(manifest, tmp / "model.pt.json")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    stored = dest if artefact.is_dir() else dest / "model.pt"
    if identity_of(kind, stored, name) != model_id:
        raise ModelError(f"{stored}: the copied artefact has another identity than {model_id}")
    return _add_version(c, repo, {
        "kind": kind, "model_id": model_id, "name": name, "path": str(rel if artefact.is_dir() else rel / "model.pt"),
        "metrics": metrics if metrics is not None else meta.get("metrics", {}),
        "lineage": lineage if lineage is not None else meta.get("lineage", {}),
        "config": config if config is not None else meta.get("config", {}), "registered_at": _now()})


def entry(repo: Path, kind: str, model_id: str) -> dict:
    """The registered entry of ``model_id``.

    Raises:
        ConfigError: not registered (the message lists what is).
    """
    models = [m for m in load(repo)["models"] if m["kind"] == kind]
    for m in models:
        if m["model_id"] == model_id:
            return m
    known = [m["model_id"] for m in models]
    raise ConfigError(f"no {kind} model {model_id!r} in the registry of {repo}; registered: {known or 'none'}")


def production(repo: Path, kind: str) -> dict | None:
    """The production entry of ``kind``, or None (the built-in default is in use)."""
    model_id = load(repo)["production"].get(kind)
    return entry(repo, kind, model_id) if model_id else None


def artefact_path(repo: Path, e: dict) -> Path:
    """Absolute path of an entry's stored artefact."""
    return models_dir(repo) / e["path"]


def serving_project(repo: Path) -> str | None:
    """The Feast project holding the production versions' features (None: the yaml's project)."""
    return load(repo).get("serving_project")


def _pick(repo: Path, kind: str, model_id: str | None) -> dict | None:
    if model_id == DEFAULT:
        return None
    return entry(repo, kind, model_id) if model_id else production(repo, kind)


def text_encoder(repo: Path, model_id: str | None = None):
    """The text encoder to materialize with: ``model_id``'s (``"default"``: the packaged model), else
    production's, else the default; at :func:`recfeast.config.encoder_precision`."""
    from recfeast.config import encoder_precision
    from recfeast.encoders.text import TextEncoder

    e = _pick(repo, "text", model_id)
    if e is None:
        return TextEncoder(precision=encoder_precision("text"))
    return TextEncoder(artefact_path(repo, e), name=e.get("name"), precision=encoder_precision("text"))


def sequence_encoder(repo: Path, input_dim: int, max_len: int, model_id: str | None = None):
    """The sequence encoder: ``model_id``'s (``"default"``: the seeded GRU), else production's, else
    the seeded default.

    Raises:
        ModelError: the stored encoder does not fit ``input_dim`` (trained on another text space).
    """
    from recfeast.encoders.sequence import SequenceEncoder, SequenceEncoderConfig

    e = _pick(repo, "sequence", model_id)
    if e is None:
        return SequenceEncoder(SequenceEncoderConfig(input_dim=input_dim, max_len=max_len))
    enc = SequenceEncoder.load(artefact_path(repo, e))
    if enc.config.input_dim != input_dim:
        raise ModelError(f"sequence model {e['model_id']} reads {enc.config.input_dim}-d items, the text "
                         f"encoder gives {input_dim}-d")
    return enc
