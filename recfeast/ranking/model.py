"""The ranking model: an MLP over dense features and projected embedding groups (torch)."""

from __future__ import annotations

import torch
from torch import nn


class RankingModel(nn.Module):
    """p(click | user, item) from dense features and embeddings.

    Each embedding input (text 384, image 1280, sequence 384, genre vectors) is projected to
    ``proj_dim`` by its own linear layer with LayerNorm; projections and the dense block are
    concatenated and fed to an MLP that outputs one logit. The design is the deep part of a
    Wide & Deep / YouTube-DNN ranker (Cheng et al. 2016; Covington et al. 2016).

    Args:
        dense_dim: width of the dense block.
        vector_dims: embedding input name -> dim.
        hidden: MLP widths. dropout: dropout after each hidden layer. proj_dim: projection width.
    """

    def __init__(self, dense_dim: int, vector_dims: dict[str, int], hidden=(256, 64), dropout=0.1, proj_dim=32):
        super().__init__()
        self.dense_dim, self.vector_dims, self.proj_dim = dense_dim, dict(vector_dims), proj_dim
        self.vector_names = sorted(vector_dims)
        self.proj = nn.ModuleDict({
            name: nn.Sequential(nn.Linear(dim, proj_dim), nn.LayerNorm(proj_dim))
            for name, dim in vector_dims.items()
        })
        width = dense_dim + proj_dim * len(vector_dims)
        layers = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``batch["dense"]``: ``(b, dense_dim)`` float32, ``batch[name]``: ``(b, dim)``; returns ``(b,)`` logits."""
        parts = [batch["dense"]] + [self.proj[n](batch[n]) for n in self.vector_names]
        return self.mlp(torch.cat(parts, dim=1)).squeeze(1)
