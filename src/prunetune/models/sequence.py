"""Built-in sequence and recommendation models.

Sequence models take a batch of feature-vector sequences laid out [batch, time, features] (what the
`sequences` data source gives; `input_shape` is (time, features)) and accept any number of time
steps. The recommender takes [batch, 2] integer (user, item) indices (the `ratings` source) and
predicts one rating. Every model names its output layer `classifier`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import MODELS


def _features(input_shape: tuple[int, ...], features: int | None) -> int:
    if features is not None:
        return int(features)
    if len(input_shape) != 2:
        raise ValueError(f"expects inputs [time, features], got input_shape {list(input_shape)}")
    return int(input_shape[-1])


@MODELS.register("conv1d_net")
class Conv1dNet(nn.Module):
    """1-D CNN over [time, features] sequences: conv-BN-ReLU blocks along time, global average pool, FC head."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], features: int | None = None,
                 widths: tuple[int, ...] = (32, 64), kernel_size: int = 5, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        c = _features(input_shape, features)
        layers: list[nn.Module] = []
        for w in widths:
            layers += [nn.Conv1d(c, w, kernel_size, padding=kernel_size // 2, bias=False), nn.BatchNorm1d(w), nn.ReLU()]
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [batch, time, features] -> [batch, features (channels), time]
        return self.classifier(self.head(self.pool(self.features(x.transpose(1, 2)))))


@MODELS.register("lstm_classifier")
class LSTMClassifier(nn.Module):
    """LSTM (or GRU: cell=gru) over [time, features] sequences, mean- or last-step pooled, FC head."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], features: int | None = None,
                 hidden_size: int = 64, num_layers: int = 1, bidirectional: bool = False, cell: str = "lstm",
                 pool: str = "mean", hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        cells = {"lstm": nn.LSTM, "gru": nn.GRU}
        if cell not in cells:
            raise ValueError(f"cell must be lstm or gru, not {cell!r}")
        if pool not in ("mean", "last"):
            raise ValueError(f"pool must be mean or last, not {pool!r}")
        self.pool = pool
        self.rnn = cells[cell](_features(input_shape, features), hidden_size, num_layers=num_layers,
                               bidirectional=bidirectional, batch_first=True)
        out = hidden_size * (2 if bidirectional else 1)
        self.head = nn.Sequential(nn.Linear(out, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        z = out.mean(1) if self.pool == "mean" else out[:, -1]
        return self.classifier(self.head(z))


@MODELS.register("recommender")
class Recommender(nn.Module):
    """MLP recommender (NCF-style): user and item embeddings, concatenated, an MLP, one predicted rating.

    `num_users` / `num_items` (table sizes) and `rating_mean` (the output bias's start) come from the
    data; `num_classes` is not used (the output is one number)."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], num_users: int = 1, num_items: int = 1,
                 dim: int = 32, hidden: tuple[int, ...] = (64, 32), dropout: float = 0.0, rating_mean: float = 0.0):
        super().__init__()
        if num_users < 1 or num_items < 1:
            raise ValueError(f"num_users and num_items must be >= 1 (got {num_users}, {num_items})")
        self.user = nn.Embedding(num_users, dim)
        self.item = nn.Embedding(num_items, dim)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)
        layers: list[nn.Module] = []
        c = 2 * dim
        for h in hidden:
            layers += [nn.Linear(c, h), nn.ReLU(), nn.Dropout(dropout)]
            c = h
        self.mlp = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, 1)
        with torch.no_grad():
            self.classifier.bias.fill_(float(rating_mean))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [batch, 2] long (user, item)
        z = torch.cat([self.user(x[:, 0]), self.item(x[:, 1])], dim=1)
        return self.classifier(self.mlp(z))
