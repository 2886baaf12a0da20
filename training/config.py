"""The typed configuration of a training run (stored in the checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from recfeast.errors import ConfigError

#: feature groups of the ranking model; "behavior" is always on (see training/features.py)
GROUPS = ("behavior", "text", "image", "sequence")


def data_split_dates(spec, times: pd.Series) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The catalog spec's split (``split.val`` / ``split.test``: fractions of the time range or
    durations) back from the end of the data's last day: ``(T1, T2)`` as UTC midnights.

    Raises:
        ConfigError: no event times, or the split leaves no training period.
    """
    from recfeast.spec import parse_duration_s

    if not len(times):
        raise ConfigError("no events: cannot place the time split")
    end = times.max().floor("D") + pd.Timedelta(days=1)
    span = end - times.min().floor("D")

    def back(part):
        if isinstance(part, str):
            return pd.Timedelta(seconds=parse_duration_s(part))
        return pd.Timedelta(seconds=round(span.total_seconds() * part / 86400) * 86400)

    t2 = end - back(spec.split.test)
    t1 = t2 - back(spec.split.val)
    if t1 <= times.min():
        raise ConfigError(f"split {spec.split.val} + {spec.split.test} back from {end.date()} leaves no training "
                          f"period (data from {times.min().date()}): shorten split.val / split.test in the catalog spec")
    return t1, t2


def split_dates(val_start: str, test_start: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The temporal split's boundaries T1 < T2 as UTC timestamps (shared by every training task).

    Raises:
        ConfigError: a value is not a date, or T1 is not before T2.
    """
    try:
        t1, t2 = pd.Timestamp(val_start, tz="UTC"), pd.Timestamp(test_start, tz="UTC")
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"val_start={val_start!r} / test_start={test_start!r}: expected "
                          f"dates like 1998-03-01 ({exc})") from exc
    if t1 >= t2:
        raise ConfigError(f"val_start {val_start} must be before test_start {test_start}")
    return t1, t2


@dataclass
class TrainConfig:
    """Settings of ``recfeast train`` / :func:`recfeast.training.train`."""

    # --- data
    repo: str | None = None                 # feature repository; default recfeast.config.repo_path()
    data_dir: str | None = None             # raw events (for labels); default $RECFEAST_DATA_DIR
    feature_service: str = "ranking_v1"     # what training and serving both read
    positive_min_value: float | None = None  # override the spec's positive min_value (e.g. ratings >= 4)
    negatives_per_positive: int = 2         # sampled items the user never touched, per positive, same timestamp
    val_start: str | None = None            # T1: train before, validation T1..T2; None: the spec's split
    test_start: str | None = None           # T2: test from here; None: the spec's split
    allow_values_created_later: bool = False  # join values created after each example's time (a leak; off)
    seed: int = 0                           # negatives, initialisation, shuffling
    # --- model
    groups: tuple[str, ...] = GROUPS        # feature groups fed to the model
    hidden: tuple[int, ...] = (256, 64)     # MLP widths
    dropout: float = 0.1
    embedding_dropout: float = 0.0          # zero a projected embedding per example in training (see RankingModel)
    # --- optimisation
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 1024
    max_epochs: int = 30
    patience: int = 3                       # early stopping on validation log loss
    # --- evaluation
    eval_negatives: int = 99                # sampled unrated items ranked against each held-out positive
    eval_max_users: int | None = 300        # users in the ranking evaluation (first test positive each)
    k: int = 10                             # cut-off of NDCG@K / HR@K
    ablation: bool = True                   # also train behaviour-only, +text, +image, +sequence
    out_dir: str = "runs/ranking"           # checkpoint, metrics JSON, tables, plots
    keep_training_set: bool = False         # also write the joined set (vectors included) as training_set.parquet
    extra: dict = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        """Check every setting before any work is done.

        Raises:
            ConfigError: naming the setting and what was expected.
        """
        if (self.val_start is None) != (self.test_start is None):
            raise ConfigError("give both val_start and test_start, or neither (the catalog spec's split)")
        if self.val_start is not None:
            split_dates(self.val_start, self.test_start)
        checks = {"negatives_per_positive": 1, "max_epochs": 1, "eval_negatives": 1, "batch_size": 1,
                  "patience": 1, "k": 1}
        for name, low in checks.items():
            if not isinstance(getattr(self, name), int) or getattr(self, name) < low:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected an integer >= {low}")
        if self.eval_max_users is not None and (not isinstance(self.eval_max_users, int) or self.eval_max_users < 1):
            raise ConfigError(f"eval_max_users={self.eval_max_users!r}: expected None (all users) or an integer >= 1")
        bad = set(self.groups) - set(GROUPS)
        if bad:
            raise ConfigError(f"unknown feature group(s) {sorted(bad)}; expected some of {GROUPS}")
        return self
