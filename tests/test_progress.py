"""Progress bars: live on a terminal (training steps with the loss and time left, long evaluations),
nothing at all when stderr is a log file or a CI pipe."""

from __future__ import annotations

import io
import sys
import time

import torch
from conftest import TinyCNN, make_bundle

from prunetune.data.base import LazyInputs, TensorData, batches
from prunetune.progress import progress
from prunetune.recipe import TrainSpec
from prunetune.registry import TASKS
from prunetune.training import Trainer


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _fit(epochs: int = 2) -> None:
    torch.manual_seed(0)
    bundle = make_bundle(n=120)
    Trainer(TinyCNN(num_classes=3, input_shape=(1, 8, 8)), TASKS.get("classification")(), bundle, TrainSpec(epochs=epochs, batch_size=8),
            torch.device("cpu"), 0, desc="dense", log=lambda m: None).fit(epochs)


def test_nothing_is_printed_when_stderr_is_not_a_terminal(capsys):
    it = [1, 2, 3]
    assert progress(it, 3, "x") is it
    _fit()
    assert list(batches(make_bundle(n=30).test, 2)) and capsys.readouterr().err == ""


def test_training_shows_steps_loss_and_time_left_on_a_terminal(monkeypatch):
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    _fit(epochs=2)
    shown = term.getvalue()
    # 72 training examples in batches of 8: 9 steps per epoch, each epoch its own bar.
    assert "dense 1/2:" in shown and "dense 2/2:" in shown and "/9 [00:00<" in shown  # [elapsed<time left
    assert "loss=" in shown and shown.endswith("\r")  # the bar is cleared when the epoch ends


class SlowImages(LazyInputs):
    """20 images that take 0.3 s per batch to read."""

    shape = (20, 1, 2, 2)

    def __len__(self) -> int:
        return 20

    def __getitem__(self, idx):
        time.sleep(0.3)
        return torch.zeros(len(idx) if isinstance(idx, torch.Tensor) else len(range(20)[idx]), 1, 2, 2)


def test_a_long_evaluation_shows_a_bar_on_a_terminal(monkeypatch):
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert len(list(batches(make_bundle(n=200).test, 4))) == 10
    assert term.getvalue() == ""  # under a second: no bar flashes
    assert len(list(batches(TensorData(SlowImages(), torch.zeros(20, dtype=torch.long)), 4))) == 5  # 1.5 s
    assert "evaluate 20 examples:" in term.getvalue() and "/5 [00:01<" in term.getvalue()
    term.seek(0), term.truncate()
    assert len(list(batches(TensorData(SlowImages(), torch.zeros(20, dtype=torch.long)), 4, shuffle=True))) == 5
    assert term.getvalue() == ""  # a shuffled pass (calibration) is no evaluation: no bar
