"""Shared fixtures: tiny models and synthetic data (milliseconds on CPU), and paths to real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from prunetune.data.base import DataBundle, TensorData
from prunetune.registry import DATA_SOURCES, MODELS, load_builtins

FMNIST = Path("/usr/share/datasets/fashion-mnist")
ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """On the controller, before any xdist worker starts: let the Adversarial Robustness Toolbox write its
    ~/.art/config.json once. Its first import checks for that file and writes it in two steps, so two
    workers importing it at once on a fresh home directory race, and the loser fails with
    `NameError: name '_config' is not defined` (seen on a fresh machine)."""
    if hasattr(config, "workerinput"):
        return
    try:
        import art.config  # noqa: F401
    except ImportError:  # the robust extra is optional: its tests skip without it
        pass


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


class TinyMLP(nn.Module):
    def __init__(self, num_classes, input_shape):
        super().__init__()
        d = int(torch.tensor(input_shape).prod())
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


class TinyCNN(nn.Module):
    def __init__(self, num_classes, input_shape):
        super().__init__()
        c = input_shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(c, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(64, 32), nn.ReLU())
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.classifier(self.head(self.features(x)))


def _register_tiny():
    load_builtins()
    for name, cls in (("tiny_mlp", TinyMLP), ("tiny_cnn", TinyCNN)):
        if name not in MODELS:
            MODELS.register(name, f"test model {cls.__name__}")(cls)
    if "synthetic" not in DATA_SOURCES:
        # In-process only: lets pipeline tests run in milliseconds without files.
        DATA_SOURCES.register("synthetic", "test data: 3 learnable classes of 8x8 noise")(
            lambda spec, seed: make_bundle(n=int(spec.limit or 96), seed=seed))


_register_tiny()


def make_bundle(n: int = 96, classes: int = 3, shape=(1, 8, 8), seed: int = 0, signal: float = 1.0,
                shift: float = 0.0, class_names: list[str] | None = None) -> DataBundle:
    """Learnable noise images (class c adds c * signal), split 60/20/20 with every class in every split."""
    from prunetune.data.base import split_train_val

    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, *shape, generator=g) + signal * y.view(-1, 1, 1, 1).float() + shift
    data = TensorData(x, y)
    rest, test = split_train_val(y, 0.2, seed)
    train, val = split_train_val(y[rest], 0.25, seed + 1)
    return DataBundle(train=data.subset(rest[train]), val=data.subset(rest[val]), test=data.subset(test),
                      class_names=class_names or [f"c{i}" for i in range(classes)], input_shape=tuple(shape),
                      preprocess={"kind": "image", "mean": [0.0], "std": [1.0], "size": list(shape[1:]), "channels": shape[0]},
                      eval_batch_size=64)


@pytest.fixture
def ctrl_c():
    """Ctrl-C deliverable in this test, however pytest was started: a shell without job control starts a
    background command (`make test &`) with SIGINT ignored, which every process then inherits and which
    prunetune rightly leaves alone. Yields what a subprocess's preexec_fn needs to get it back."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
    finally:
        signal.signal(signal.SIGINT, before)


def cli_env(tmp_path) -> dict:
    env = dict(os.environ)
    env["PRUNETUNE_CACHE"] = str(tmp_path / "cache")
    env["KINETO_LOG_LEVEL"] = "5"
    return env
