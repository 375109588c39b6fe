"""What every command starts from: the RNGs seeded, the device, the task and the tracker; then the
data and the dense model as the command needs them (`run`, `refine`, `eval`, a sweep's dense reference).

Example:
    >>> s = open_session(seed=0, task=Task.named("classification"), device="cpu")
    >>> s.device.type, s.task.metric
    ('cpu', 'accuracy')
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .data import DataBundle, build_data
from .dense import obtain_dense
from .errors import PrunetuneError
from .robustness import check_inputs as check_robustness
from .tasks import Task
from .tracking import Tracker, make_tracker


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str | None) -> torch.device:
    """The device `name` (`evaluate.device`), or CUDA when there is one and no name is given."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PrunetuneError(f"evaluate.device: {name!r} is not a device; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PrunetuneError("evaluate.device: cuda was asked for but no CUDA device is available; use cpu")
    return device


def kernel_settings(device: torch.device | str) -> bool | dict[str, Any]:
    """report.json's `nondeterministic_kernels`: False on CPU (same recipe + seed -> same result);
    on CUDA the settings the run used (cuDNN / cuBLAS kernels may then vary run to run)."""
    if torch.device(device).type != "cuda":
        return False
    det = torch.are_deterministic_algorithms_enabled()
    return {"possible": not det,
            "torch.backends.cudnn.deterministic": bool(torch.backends.cudnn.deterministic),
            "torch.backends.cudnn.benchmark": bool(torch.backends.cudnn.benchmark),
            "torch.are_deterministic_algorithms_enabled": det}


@dataclasses.dataclass
class Session:
    """A prepared run: `open_session` fills the first fields, `load_data` and `obtain_dense` the rest."""

    seed: int
    device: torch.device
    task: Task
    tracker: Tracker
    log: Callable[[str], None]
    bundle: DataBundle | None = None
    dense: nn.Module | None = None
    dense_info: dict[str, Any] | None = None

    def load_data(self, spec, model=None, *, saved: dict[str, Any] | None = None, robustness=None,
                  score_on: str = "test", announce: bool = False) -> DataBundle:
        """The data of `spec` (a DataSpec) for `model` (a ModelSpec), preprocessed as a saved model's
        `saved` preprocess says when given; `announce` logs the split sizes. `robustness`
        (evaluate.robustness) is checked against it before any training; `score_on="val"` puts the
        validation split in the test split's place (a search never looks at the test set)."""
        bundle = build_data(spec, self.seed, model, saved=saved)
        if announce:
            self.log(f"data: {len(bundle.train)} train / {len(bundle.val)} val / {len(bundle.test)} test"
                     + (f", {bundle.num_classes} classes" if self.task.labels else ""))
            for note in bundle.notes:
                self.log(f"data: {note}")
        check_robustness(bundle, robustness, self.task)  # text, or no ART: refused before any training
        if score_on == "val":
            bundle = dataclasses.replace(bundle, test=bundle.val)
        self.bundle = bundle
        return bundle

    def obtain_dense(self, recipe, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> tuple[nn.Module, dict[str, Any]]:
        """The recipe's dense model on the session's device and how it was obtained (`dense.obtain_dense`)."""
        self.dense, self.dense_info = obtain_dense(recipe, self.bundle, self.task, self.device, self.log, on_epoch=on_epoch)
        return self.dense, self.dense_info


def open_session(recipe=None, log: Callable[[str], None] = print, *, seed: int | None = None, task: Task | None = None,
                 device: str | None = None, track: str | Tracker | None = None, track_uri: str | None = None) -> Session:
    """Seed every RNG, pick the device, make the task and the tracker, from `recipe` (a Recipe) unless
    given one by one (eval reads them from a saved model's manifest). Unknown tracker names and
    missing tracking libraries fail here, before anything runs."""
    tracker = make_tracker(track, track_uri, log)
    seed = recipe.seed if seed is None else seed
    seed_everything(seed)
    dev = pick_device(recipe.evaluate.device if recipe is not None and device is None else device)
    return Session(seed, dev, Task.from_recipe(recipe) if task is None else task, tracker, log)
