"""Tiny sequence / embedding models and synthetic data for the pruning contracts (milliseconds on CPU),
and file writers for the `sequences` and `ratings` sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunetune.data.base import DataBundle, TensorData, split_train_val
from prunetune.registry import MODELS, load_builtins


class TinyLSTM(nn.Module):
    """2-layer bidirectional LSTM over [time, features], mean-pooled, a hidden FC layer."""

    def __init__(self, num_classes, input_shape):
        super().__init__()
        self.rnn = nn.LSTM(input_shape[-1], 8, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(16, 8)
        self.classifier = nn.Linear(8, num_classes)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.classifier(torch.relu(self.head(out.mean(1))))


class TinyGRU(nn.Module):
    """GRU read through its final hidden state h_n, straight into the classifier."""

    def __init__(self, num_classes, input_shape):
        super().__init__()
        self.rnn = nn.GRU(input_shape[-1], 8, batch_first=True)
        self.classifier = nn.Linear(8, num_classes)

    def forward(self, x):
        _, h = self.rnn(x)
        return self.classifier(h[-1])


class TinyConv1d(nn.Module):
    def __init__(self, num_classes, input_shape):
        super().__init__()
        f = input_shape[-1]
        self.features = nn.Sequential(
            nn.Conv1d(f, 8, 3, padding=1, bias=False), nn.BatchNorm1d(8), nn.ReLU(),
            nn.Conv1d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(16, 8), nn.ReLU())
        self.classifier = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.classifier(self.head(self.features(x.transpose(1, 2))))


class TinyEmbed(nn.Module):
    """Token ids -> embedding -> GRU -> mean -> classifier: the embedding's consumer is an RNN."""

    def __init__(self, num_classes, input_shape, vocab: int = 12):
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.rnn = nn.GRU(8, 8, batch_first=True)
        self.classifier = nn.Linear(8, num_classes)

    def forward(self, x):
        out, _ = self.rnn(self.embed(x))
        return self.classifier(out.mean(1))


SEQ_MODELS = {"tiny_lstm": TinyLSTM, "tiny_gru": TinyGRU, "tiny_conv1d": TinyConv1d, "tiny_embed": TinyEmbed}


def register() -> None:
    load_builtins()
    for name, cls in SEQ_MODELS.items():
        if name not in MODELS:
            MODELS.register(name, f"test model {cls.__name__}")(cls)


register()


def _split(x, y, shape, seed, kind) -> DataBundle:
    data = TensorData(x, y)
    rest, test = split_train_val(y, 0.2, seed)
    train, val = split_train_val(y[rest], 0.25, seed + 1)
    return DataBundle(train=data.subset(rest[train]), val=data.subset(rest[val]), test=data.subset(test),
                      class_names=[f"c{i}" for i in range(int(y.max()) + 1)], input_shape=tuple(shape),
                      preprocess={"kind": kind}, eval_batch_size=64)


def make_seq_bundle(n: int = 96, classes: int = 3, time: int = 6, features: int = 4, seed: int = 0) -> DataBundle:
    """Learnable noise sequences [n, time, features]: class c adds c to feature 0 at every step."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, time, features, generator=g)
    x[:, :, 0] += y.view(-1, 1).float()
    return _split(x, y, (time, features), seed, "sequence")


def make_token_bundle(n: int = 96, classes: int = 3, time: int = 6, vocab: int = 12, seed: int = 0) -> DataBundle:
    """Token id sequences [n, time]: class c draws its tokens from its own third of the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = (y.view(-1, 1) * (vocab // classes) + torch.randint(0, vocab // classes, (n, time), generator=g)).long()
    return _split(x, y, (time,), seed, "tokens")


BUNDLES = {"tiny_lstm": make_seq_bundle, "tiny_gru": make_seq_bundle, "tiny_conv1d": make_seq_bundle,
           "tiny_embed": make_token_bundle}


# ---------------------------------------------------------------- files for the data sources


def write_sequences(root: Path, n_train: int = 120, n_test: int = 45, time: int = 10, features: int = 4,
                    classes: int = 3, seed: int = 0, fmt: str = "npy", test_features: int | None = None) -> Path:
    """An easy synthetic task: class c shifts feature 0 by 1.5 * c (plus noise) at every step."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n, f in (("train", n_train, features), ("test", n_test, test_features or features)):
        if n == 0:
            continue
        y = np.arange(n) % classes
        x = rng.normal(size=(n, time, f)).astype(np.float32)
        x[:, :, 0] += 1.5 * y[:, None]
        if fmt == "npy":
            np.save(root / f"{split}.npy", x)
            np.save(root / f"{split}_labels.npy", y)
        else:
            lines = ["sequence,step," + ",".join(f"f{j}" for j in range(f)) + ",label"]
            for i in range(n):
                for t in range(time):
                    lines.append(f"s{i},{t}," + ",".join(f"{v:.5f}" for v in x[i, t]) + f",{y[i]}")
            (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def write_ratings(root: Path, users: int = 40, items: int = 30, n: int = 1500, seed: int = 0,
                  test: list[str] | None = None, header: bool = True) -> Path:
    """Ratings = 3 + user bias + item bias + noise, clipped to [1, 5]; `test` lines become test.csv."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    ub, ib = rng.normal(size=users), rng.normal(size=items)
    lines = ["user,item,rating"] if header else []
    pairs = [(u, i) for u in range(users) for i in range(items)]
    for k in rng.permutation(len(pairs))[:n]:
        u, i = pairs[k]
        lines.append(f"{u},{i},{float(np.clip(3 + ub[u] + ib[i] + 0.2 * rng.normal(), 1, 5)):.3f}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    if test is not None:
        (root / "test.csv").write_text("\n".join(["user,item,rating", *test]) + "\n")
    return root
