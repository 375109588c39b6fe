"""Robustness as a measurement: accuracy under Gaussian input noise and under FGSM and PGD attacks.

`evaluate.robustness` in the recipe adds this to every stage (dense, pruned, fine-tuned). The attacks
are the Adversarial Robustness Toolbox's (ART: `FastGradientMethod`, `ProjectedGradientDescent`,
L-infinity, untargeted, crafted against the true labels); none of the attack code is ours. ART is
an optional extra: `pip install 'prunetune[robust]'`.

Units: every strength is in *pixel units of the [0, 1] range* (eps 0.1 = a tenth of the pixel range,
the usual convention), whatever normalisation the model was trained with. The bundle's images are
stored normalised (x = (pixel - mean) / std, `bundle.preprocess`), so they are mapped back to pixels
(clamped to [0, 1]), attacked there with `clip_values=(0, 1)`, and normalised again inside the
estimator (ART's `preprocessing=(mean, std)`, differentiable): in the model's normalised space a
pixel-space eps is eps / std per channel, and the attacked images stay valid images. Gaussian noise
(sigma in the same pixel units, clipped to [0, 1], seeded) is a three-line perturbation, not an
attack, and is ours.

PGD follows Madry et al. (2018): `pgd_steps` steps (default 10) of size `pgd_step_size` x eps
(default 2.5 / steps, so the walk can cross the ball), one random start inside the ball. A strength
of 0 leaves the input unchanged (ART's PGD refuses a zero step; the ball is a point).

Text inputs are refused: attacks in embedding space are out of scope.

Example:
    >>> from prunetune.robustness import strength_key
    >>> strength_key(0.05), strength_key(0)
    ('0.05', '0.0')
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from .data.base import balanced_subset
from .errors import PrunetuneError

ATTACKS = ("noise", "fgsm", "pgd")
LABELS = {"noise": "noise σ", "fgsm": "FGSM ε", "pgd": "PGD ε"}
INSTALL = "pip install 'prunetune[robust]'"


def strength_key(value: float) -> str:
    """The key a strength has in the results (`repr` of the float: exact, so a sweep's floor finds it)."""
    return repr(float(value))


def _art():
    try:
        import art  # noqa: F401  (its __init__ also writes ~/.art/config.json on first import)
        from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        raise PrunetuneError(f"evaluate.robustness needs the Adversarial Robustness Toolbox; {INSTALL}") from None
    return art, PyTorchClassifier, FastGradientMethod, ProjectedGradientDescent


def check_inputs(bundle, spec, task=None) -> None:
    """Refuse early (before any training) what `measure_robustness` could not measure; `spec` is the
    recipe's `evaluate.robustness` (nothing to check when it is None)."""
    if spec is None:
        return
    if task is not None and not task.labels:  # accuracy under attack needs class labels
        raise PrunetuneError(f"evaluate.robustness: measures classification accuracy; task {task.name!r} is scored by "
                             f"{task.metric}; remove evaluate.robustness")
    if (bundle.preprocess or {}).get("kind") != "image" or getattr(bundle.test, "is_text", False):
        kind = (bundle.preprocess or {}).get("kind", "unknown")
        raise PrunetuneError(f"evaluate.robustness: only image inputs can be perturbed (this data is {kind}); "
                             "embedding-space attacks are out of scope; remove evaluate.robustness")
    _art()


class _Logits(nn.Module):
    """The task's forward (HF-style outputs -> logits) as a plain module for ART."""

    def __init__(self, model: nn.Module, task) -> None:
        super().__init__()
        self.model = model
        self._task_forward = task.forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._task_forward(self.model, x).float()


@contextmanager
def _attack_mode(model: nn.Module, seed: int) -> Iterator[None]:
    """Gradients on (even under no_grad / inference_mode), w.r.t. the input only; eval mode; the
    global numpy and torch RNGs untouched (ART draws PGD's random start from numpy's). Afterwards the
    parameters have their requires_grad back and no .grad."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    was_training = model.training
    np_state = np.random.get_state()
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=[]):
            for p in params:
                p.requires_grad_(False)
            model.eval()
            np.random.seed(seed)
            yield
    finally:
        np.random.set_state(np_state)
        for p, f in zip(params, flags):
            p.requires_grad_(f)
            p.grad = None
        model.train(was_training)


def _pixels(bundle, idx: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The selected test images mapped back to pixels in [0, 1] (float32) and the (C, 1, 1) mean / std."""
    pre = bundle.preprocess
    x = bundle.test.take(idx).float()
    c = x.shape[1] if x.ndim == 4 else 1
    mean = np.asarray(pre.get("mean") or [0.0], dtype=np.float32)
    std = np.asarray(pre.get("std") or [1.0], dtype=np.float32)
    if mean.size == 1 and c > 1:
        mean, std = np.repeat(mean, c), np.repeat(std, c)
    shape = (c, 1, 1) if x.ndim == 4 else (1,) * (x.ndim - 1)
    mean, std = mean.reshape(shape), std.reshape(shape)
    pix = x.cpu().numpy() * std + mean
    lo, hi = float(pix.min()), float(pix.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise PrunetuneError(
            f"evaluate.robustness: the images do not map back to pixels in [0, 1] with the data's mean/std "
            f"(range {lo:.3g} to {hi:.3g}); strengths are in pixel units, so the data must carry its normalisation")
    return np.clip(pix, 0.0, 1.0).astype(np.float32), mean, std


@contextmanager
def _attacker(model: nn.Module, task, bundle, spec, device: torch.device, idx: torch.Tensor | None):
    """Inside the attack context: (ART classifier, clean pixels, labels, perturbed, ART version), where
    `perturbed()` yields (attack, key, perturbed pixels) one condition at a time (large images: one copy
    of the subset in memory at once, not one per condition)."""
    art, PyTorchClassifier, FGSM, PGD = _art()
    if idx is None:
        idx = balanced_subset(bundle.test.y, spec.examples, spec.seed)
    x, mean, std = _pixels(bundle, idx)
    y = bundle.test.y[idx].cpu().numpy().astype(np.int64)
    batch = bundle.eval_batch_size
    with _attack_mode(model, spec.seed), (torch.cuda.device(device) if device.type == "cuda" else nullcontext()):
        clf = PyTorchClassifier(
            model=_Logits(model, task), loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
            nb_classes=bundle.num_classes, clip_values=(0.0, 1.0), preprocessing=(mean, std),
            device_type="gpu" if device.type == "cuda" else "cpu")

        def perturbed() -> Iterator[tuple[str, str, np.ndarray]]:
            g = torch.Generator().manual_seed(spec.seed)
            for sigma in spec.noise:
                noise = torch.randn(x.shape, generator=g).numpy() * np.float32(sigma)
                yield "noise", strength_key(sigma), np.clip(x + noise, 0.0, 1.0).astype(np.float32)
            for eps in spec.fgsm:
                yield "fgsm", strength_key(eps), FGSM(clf, norm=np.inf, eps=float(eps), batch_size=batch).generate(x=x, y=y)
            rel = step_fraction(spec)
            for eps in spec.pgd:
                if eps == 0:  # the ball is a point (ART refuses a zero step)
                    yield "pgd", strength_key(eps), x.copy()
                    continue
                attack = PGD(clf, norm=np.inf, eps=float(eps), eps_step=float(rel * eps), max_iter=spec.pgd_steps,
                             num_random_init=spec.pgd_random_init, batch_size=batch, verbose=False)
                yield "pgd", strength_key(eps), attack.generate(x=x, y=y)

        yield clf, x, y, perturbed, art.__version__


def step_fraction(spec) -> float:
    """PGD's step as a fraction of eps: `pgd_step_size`, by default Madry et al.'s 2.5 / steps."""
    return spec.pgd_step_size if spec.pgd_step_size is not None else round(2.5 / spec.pgd_steps, 6)


def attack_inputs(model: nn.Module, task, bundle, spec, device: torch.device, idx: torch.Tensor | None = None):
    """The perturbed images themselves, in pixel units: (clean pixels, labels, {(attack, key): array}),
    exactly as `measure_robustness` scores them; tests check their range and distance directly."""
    with _attacker(model, task, bundle, spec, device, idx) as (_, x, y, perturbed, _):
        return x, y, {(a, key): adv for a, key, adv in perturbed()}


def measure_robustness(model: nn.Module, task, bundle, spec, device: torch.device) -> dict[str, Any]:
    """Accuracy (%) on a seeded, class-balanced subset of `bundle.test` (`spec.examples` items): clean,
    and under each noise sigma, FGSM eps and PGD eps of `spec` (a `RobustnessSpec`)."""
    check_inputs(bundle, spec, task)
    t0 = time.time()
    with _attacker(model, task, bundle, spec, device, None) as (clf, x, y, perturbed, version):
        def acc(inputs: np.ndarray) -> float:
            pred = clf.predict(inputs, batch_size=bundle.eval_batch_size).argmax(1)
            return round(float((pred == y).mean()) * 100, 4)

        result: dict[str, Any] = {"examples": int(len(y)), "clean": acc(x), **{name: {} for name in ATTACKS}}
        for attack, key, adv in perturbed():
            result[attack][key] = acc(adv)
    result.update({
        "units": "pixel values in [0, 1] (eps / std in the normalised inputs)",
        "norm": "linf",
        "pgd_steps": spec.pgd_steps,
        "pgd_step_size": step_fraction(spec),
        "pgd_random_init": spec.pgd_random_init,
        "seed": spec.seed,
        "library": f"adversarial-robustness-toolbox {version}",
        "wall_s": round(time.time() - t0, 2),
    })
    return result


# -- the sweep's robustness floor --------------------------------------------------------------


def floor_label(floor) -> str:
    """'PGD ε=0.05 ≥ 60.0%' for a `RobustnessFloor` (or its dict)."""
    f = floor if isinstance(floor, dict) else floor.model_dump()
    return f"{LABELS[f['attack']]}={strength_key(f['strength'])} ≥ {f['min_accuracy']}%"


def floor_accuracy(stage: dict[str, Any], floor) -> float:
    """The stage's accuracy under the floor's condition (the recipe check guarantees it was measured)."""
    f = floor if isinstance(floor, dict) else floor.model_dump()
    measured = (stage.get("robustness") or {}).get(f["attack"]) or {}
    for key, acc in measured.items():
        if abs(float(key) - f["strength"]) <= 1e-9 * max(1.0, abs(f["strength"])):
            return float(acc)
    raise PrunetuneError(f"search.robustness_floor: no {f['attack']} measurement at {f['strength']}; "
                         f"add it to evaluate.robustness.{f['attack']}")
