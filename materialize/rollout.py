"""Rolling an encoder version forward or back without ever mixing two embedding spaces.

``recfeast models promote --text ID --data-dir DIR`` (:func:`promote`), in order:

1. checks the target versions: registered, and a trained sequence encoder was trained on the
   target text encoder's space (its lineage names the text model);
2. takes the tables lock the scheduled jobs take, so no job writes tables meanwhile;
3. runs the main job with the target versions: every embedding table is rewritten in the new
   identity (unchanged inputs come from the embedding cache, so rolling back to an earlier version
   costs no encoding); the offline tables switch here, each atomically, and training sets refuse a
   mix of identities (``training.dataset``), so a set built during the switch fails loudly rather
   than silently mixing;
4. applies the definitions and loads every online store into a Feast project of the target
   versions' own (``<project>_<8 hex of the identities>``): the project being served is untouched
   and keeps answering;
5. flips ``production`` and ``serving_project`` in the registry together: one move of the MLflow
   alias ``recfeast-serving@production`` (:func:`recfeast.model_registry.switch`). Processes
   started from then on read the new project; running servers keep the project they started with
   (consistent with the ranking checkpoint they loaded) until restarted.

Rolling back is promoting the earlier version: its project name is the same as before, its
embeddings come from the cache, and the registry's ``history`` records every flip.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from recfeast import config
from recfeast.errors import ConfigError
from recfeast import model_registry as registry

DEFAULT = registry.DEFAULT


def project_for(base: str, text_id: str | None, sequence_id: str | None) -> str:
    """Feast project of one combination of versions: ``<base>_<8 hex>`` (the base alone for the defaults)."""
    if not text_id and not sequence_id:
        return base
    return f"{base}_{hashlib.sha256(f'{text_id}|{sequence_id}'.encode()).hexdigest()[:8]}"


def _base_project(repo: Path) -> str:
    import os

    raw = yaml.safe_load(os.path.expandvars((repo / "feature_store.yaml").read_text()))
    return config.project(None) or raw["project"]


def _resolve(repo: Path, kind: str, value: str | None, current: str | None) -> str | None:
    if value is None:
        return current
    if value == DEFAULT:
        return None
    registry.entry(repo, kind, value)   # raises with the list of registered ids
    return value


def promote(repo, data_dir, text: str | None = None, sequence: str | None = None,
            online_stores: tuple[str, ...] = ("sqlite",), log=print) -> dict:
    """Make ``text`` / ``sequence`` (registered ids, or ``"default"``; None = keep) the production
    versions, following the steps of the module docstring.

    Returns:
        ``{"production": {...}, "serving_project": str, "previous": {...}, "tables": {...}}``.

    Raises:
        ConfigError: unknown version, a sequence encoder trained on another text space, bad stores.
        StoreError / ModelError: loading failed: the tables are rebuilt with the versions still served
            (from the embedding cache) and the registry is unchanged, so the old versions stay served.
    """
    from recfeast import store
    from recfeast.materialize import online
    from recfeast.materialize.job import JobConfig, run
    from recfeast.materialize.schedule import job_lock

    repo = config.repo_path(repo)
    reg = registry.load(repo)
    prod = dict(reg["production"])
    target = {"text": _resolve(repo, "text", text, prod.get("text")),
              "sequence": _resolve(repo, "sequence", sequence, prod.get("sequence"))}
    if target["sequence"]:
        trained_on = registry.entry(repo, "sequence", target["sequence"]).get("lineage", {}).get("text_model")
        want = target["text"] or _default_text_id()
        if trained_on and trained_on != want:
            raise ConfigError(f"sequence model {target['sequence']} was trained on text space {trained_on}, but the "
                              f"text version would be {want}: promote a sequence model trained on it, or "
                              f"--sequence {DEFAULT}")
    if not online_stores:
        raise ConfigError("online_stores is empty: name at least one of sqlite, redis")
    for kind in online_stores:
        config.online_store(kind)
    project = project_for(_base_project(repo), target["text"], target["sequence"])
    log(f"promote: text={target['text'] or DEFAULT}, sequence={target['sequence'] or DEFAULT} -> project {project}")
    with job_lock(repo, "tables", wait=True):
        summary = run(JobConfig(data_dir=data_dir, repo=repo, project=project, text_model=target["text"] or DEFAULT,
                                sequence_model=target["sequence"] or DEFAULT, materialize=False, progress=False,
                                online_store=online_stores[0]))
        try:
            for kind in online_stores:
                fs = store.feature_store(repo, kind, project)
                store.apply(fs)
                online.load(fs, config.tables_dir(repo), quiet=True, sequence_model=target["sequence"] or DEFAULT)
                log(f"promote: loaded {kind} into {project}")
        except Exception:
            # the tables already hold the target versions: put the served ones back (their embeddings
            # are cached) so a later load of the serving project cannot mix two spaces, then fail
            log("promote: loading failed; restoring the tables of the versions still served")
            run(JobConfig(data_dir=data_dir, repo=repo, project=reg.get("serving_project") or _base_project(repo),
                          text_model=prod.get("text") or DEFAULT, sequence_model=prod.get("sequence") or DEFAULT,
                          materialize=False, apply=False, progress=False))
            raise
        reg = registry.load(repo)
        previous = {"production": dict(reg["production"]), "serving_project": reg.get("serving_project")}
        registry.switch(repo, target, project, {"from": previous, "to": {"production": target, "serving_project": project},
                                                "at": registry._now(), "models": summary.models})
    log(f"promote: serving project is now {project}")
    return {"production": target, "serving_project": project, "previous": previous, "models": summary.models,
            "embeddings": summary.embeddings}


def _default_text_id() -> str:
    from recfeast.encoders.text import TextEncoder

    return TextEncoder().model_id
