"""Sequence encoder: a GRU (or LSTM) over a user's last N item embeddings, in time order."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from recfeast.errors import ModelError
from recfeast.encoders.identity import model_identity


@dataclass
class SequenceEncoderConfig:
    """Settings of :class:`SequenceEncoder`; stored in its checkpoint."""

    input_dim: int = 384      # item embedding size (the text encoder's dim)
    hidden_dim: int = 256     # recurrent state size
    cell: str = "gru"         # "gru" or "lstm"
    max_len: int = 20         # N: the last N items are read, older ones are dropped
    seed: int = 0             # seed of the initial weights (before the training issue trains them)


class SequenceEncoder(nn.Module):
    """User embedding from the item embeddings of the user's last N interactions.

    ``u = normalize(masked_mean(x) + W h_T)`` where ``h_T`` is the recurrent state after the last
    item and ``W`` (hidden -> input_dim) starts at zero. Untrained, ``u`` is the mean of the recent
    item embeddings (the classic "average of history" profile, e.g. Covington et al. 2016, *Deep
    Neural Networks for YouTube Recommendations*); training learns the order-aware residual
    (GRU4Rec, Hidasi et al. 2016). The output lives in the item space, so user-item cosine is
    meaningful from the first run.

    Raises:
        ModelError: ``cell`` is not ``gru``/``lstm``, or a checkpoint cannot be loaded.
    """

    def __init__(self, config: SequenceEncoderConfig | None = None):
        super().__init__()
        self.config = cfg = config or SequenceEncoderConfig()
        if cfg.cell not in ("gru", "lstm"):
            raise ModelError(f"SequenceEncoderConfig.cell={cfg.cell!r}: expected 'gru' or 'lstm'")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            rnn = nn.GRU if cfg.cell == "gru" else nn.LSTM
            self.rnn = rnn(cfg.input_dim, cfg.hidden_dim, batch_first=True)
            self.proj = nn.Linear(cfg.hidden_dim, cfg.input_dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.eval()

    @property
    def dim(self) -> int:
        """Output dimension (= ``config.input_dim``)."""
        return self.config.input_dim

    @property
    def model_id(self) -> str:
        """``sequence-<cell>@sha256:<12 hex>`` of the weights and config."""
        return model_identity(f"sequence-{self.config.cell}", self.state_dict(), asdict(self.config))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``x``: ``(b, L, input_dim)`` float32, left-aligned, zero-padded; ``lengths``: ``(b,)`` int64 >= 1.

        Returns ``(b, input_dim)`` float32, L2-normalised.
        """
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, state = self.rnn(packed)
        h_last = (state[0] if isinstance(state, tuple) else state)[-1]
        mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).to(x.dtype)
        mean = (x * mask[..., None]).sum(1) / lengths[:, None].to(x.dtype)
        return nn.functional.normalize(mean + self.proj(h_last), p=2, dim=1)

    def encode(self, sequences: Sequence[np.ndarray], batch_size: int = 256) -> np.ndarray:
        """Embed n histories.

        Args:
            sequences: n arrays ``(L_i, input_dim)`` float32, oldest first; only the last
                ``max_len`` rows are read. An empty history gives a zero row.

        Returns:
            ``(n, input_dim)`` float32; L2-normalised rows (zero rows for empty histories).

        Raises:
            ValueError: a sequence has the wrong width.
        """
        cfg, n = self.config, len(sequences)
        out = np.zeros((n, cfg.input_dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                chunk = []
                for i in range(start, min(start + batch_size, n)):
                    seq = np.asarray(sequences[i], dtype=np.float32)
                    if seq.size and (seq.ndim != 2 or seq.shape[1] != cfg.input_dim):
                        raise ValueError(f"sequences[{i}] has shape {seq.shape}, expected (L, {cfg.input_dim})")
                    if len(seq):
                        chunk.append((i, seq[-cfg.max_len:]))
                if not chunk:
                    continue
                lengths = torch.tensor([len(s) for _, s in chunk], dtype=torch.int64)
                x = torch.zeros((len(chunk), int(lengths.max()), cfg.input_dim), dtype=torch.float32)
                for j, (_, s) in enumerate(chunk):
                    x[j, :len(s)] = torch.from_numpy(s)
                out[[i for i, _ in chunk]] = self(x, lengths).numpy()
        return out

    def save(self, path: str | Path) -> None:
        """Write the config and weights to ``path`` (atomically: temporary file, then rename)."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save({"config": asdict(self.config), "state_dict": self.state_dict()}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "SequenceEncoder":
        """Rebuild an encoder from a :meth:`save` checkpoint alone.

        Raises:
            ModelError: the file is missing or not such a checkpoint.
        """
        try:
            ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
            model = cls(SequenceEncoderConfig(**ckpt["config"]))
            model.load_state_dict(ckpt["state_dict"], strict=True)
        except (OSError, KeyError, TypeError, RuntimeError) as exc:
            raise ModelError(f"{path}: not a SequenceEncoder checkpoint: {exc}") from exc
        return model.eval()
