"""Model registry: trained encoders with their identity, metrics and lineage; one production
version per kind; the Feast project that serves it.

``<repo>/data/models/registry.json`` (written atomically) lists every registered model::

    {"models": [{"kind": "text", "model_id": "name@sha256:...", "path": "text/<hash>", "metrics": {...},
                 "lineage": {...}, "config": {...}, "registered_at": "..."}],
     "production": {"text": "name@sha256:...", "sequence": null},
     "serving_project": "recfeast_3f2a9c01",
     "history": [{"kind": "text", "from": null, "to": "...", "project": "...", "at": "..."}]}

Artefacts are copied under ``<repo>/data/models/<kind>/<hash>/`` at registration, so a registered
version cannot change under its identity. Without a production entry, a kind uses its built-in
default: the packaged all-MiniLM-L6-v2 for text, the seeded (untrained) GRU for sequences.

Promotion (:mod:`recfeast.materialize.rollout`) computes and loads the new version's features into
a Feast project of their own before it flips ``production`` and ``serving_project`` together, so
no reader ever sees two embedding spaces mixed; see there.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

from recfeast.errors import ConfigError, ModelError

KINDS = ("text", "sequence")
DEFAULT = "default"   # names the built-in version of a kind (packaged MiniLM, seeded GRU)
REGISTRY = "registry.json"


def models_dir(repo: Path) -> Path:
    """``<repo>/data/models``."""
    return Path(repo) / "data" / "models"


def load(repo: Path) -> dict:
    """The registry (an empty one when nothing was registered)."""
    path = models_dir(repo) / REGISTRY
    if not path.is_file():
        return {"models": [], "production": {k: None for k in KINDS}, "serving_project": None, "history": []}
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


def save(repo: Path, reg: dict) -> None:
    """Write the registry atomically."""
    from recfeast.io import write_json

    write_json(models_dir(repo) / REGISTRY, reg)


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
    raise ConfigError(f"kind={kind!r}: expected one of {KINDS}")


def _training_record(artefact: Path) -> dict:
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
        kind: ``text`` (a transformers folder) or ``sequence`` (a :meth:`SequenceEncoder.save` file).
        artefact: the folder or file a fine-tuning run wrote.
        name: model name for a text model's identity (default: ``finetune.json``'s, else the folder's).

    Returns:
        The registry entry.

    Raises:
        ConfigError: unknown kind or missing artefact. ModelError: it does not load.
    """
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r}: expected one of {KINDS}")
    artefact = Path(artefact)
    if not artefact.exists():
        raise ConfigError(f"{artefact}: no such model artefact")
    meta = _training_record(artefact)
    if kind == "text":
        name = name or (meta.get("config") or {}).get("name") or artefact.name
        _check_tokenizer(artefact)
    model_id = identity_of(kind, artefact, name)
    reg = load(repo)
    for m in reg["models"]:
        if m["kind"] == kind and m["model_id"] == model_id:
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
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    stored = dest if artefact.is_dir() else dest / "model.pt"
    if identity_of(kind, stored, name) != model_id:
        raise ModelError(f"{stored}: the copied artefact has another identity than {model_id}")
    entry = {"kind": kind, "model_id": model_id, "name": name,
             "path": str(rel if artefact.is_dir() else rel / "model.pt"),
             "metrics": metrics if metrics is not None else meta.get("metrics", {}),
             "lineage": lineage if lineage is not None else meta.get("lineage", {}),
             "config": config if config is not None else meta.get("config", {}), "registered_at": _now()}
    reg["models"].append(entry)
    save(repo, reg)
    return entry


def entry(repo: Path, kind: str, model_id: str) -> dict:
    """The registered entry of ``model_id``.

    Raises:
        ConfigError: not registered (the message lists what is).
    """
    reg = load(repo)
    for m in reg["models"]:
        if m["kind"] == kind and m["model_id"] == model_id:
            return m
    known = [m["model_id"] for m in reg["models"] if m["kind"] == kind]
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
    path = models_dir(repo) / REGISTRY
    if not path.is_file():
        return None
    return load(repo).get("serving_project")


def _pick(repo: Path, kind: str, model_id: str | None) -> dict | None:
    if model_id == DEFAULT:
        return None
    return entry(repo, kind, model_id) if model_id else production(repo, kind)


def text_encoder(repo: Path, model_id: str | None = None):
    """The text encoder to materialize with: ``model_id``'s (``"default"``: the packaged model), else
    production's, else the default; at :func:`recfeast.config.text_precision`."""
    from recfeast.config import text_precision
    from recfeast.encoders.text import TextEncoder

    e = _pick(repo, "text", model_id)
    if e is None:
        return TextEncoder(precision=text_precision())
    return TextEncoder(artefact_path(repo, e), name=e.get("name"), precision=text_precision())


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
