"""The typed configuration of a training run (stored in the checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass, field

#: feature groups of the ranking model; "behavior" is always on (see training/features.py)
GROUPS = ("behavior", "text", "image", "sequence")


@dataclass
class TrainConfig:
    """Settings of ``recfeast train`` / :func:`recfeast.training.train`."""

    # --- data
    repo: str | None = None                 # feature repository; default recfeast.config.repo_path()
    data_dir: str | None = None             # raw events (for labels); default $RECFEAST_DATA_DIR
    feature_service: str = "ranking_v1"     # what training and serving both read
    positive_min_rating: float = 4.0        # a rating >= this is a positive
    negatives_per_positive: int = 2         # sampled unrated items per positive, same timestamp
    val_start: str = "1998-03-01"           # T1: train before, validation T1..T2
    test_start: str = "1998-03-29"          # T2: test from here
    reproducible: bool = False              # hide feature rows created after each example's time
    seed: int = 0                           # negatives, initialisation, shuffling
    # --- model
    groups: tuple[str, ...] = GROUPS        # feature groups fed to the model
    hidden: tuple[int, ...] = (256, 64)     # MLP widths
    dropout: float = 0.1
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
    extra: dict = field(default_factory=dict)
