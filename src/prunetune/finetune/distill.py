"""Knowledge distillation while fine-tuning the pruned model (Hinton et al. 2015).

loss = (1 - alpha) * task loss + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

The teacher runs in inference mode once per batch, or, when the training data is not augmented,
once per example at the first fine-tuning batch (its logits are cached), so a run or a sweep trial
pays the teacher's cost once, inside the first epoch's time. When the teacher is a cached dense model
(`dense.cache`), its logits over the training split are cached on disk beside it
(`<cache>/teacher/<dense key>-<split fingerprint>.safetensors`): the next run or sweep trial that
distils from the same dense model on the same split reads them instead of running the teacher.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from ..artifacts import load_model
from ..errors import PrunetuneError
from ..files import cache_tensors
from ..pruning.masks import realise
from ..tasks import to_device


def load_teacher(spec, dense: nn.Module, bundle, trust_code: bool) -> tuple[nn.Module, str]:
    """The teacher model: the run's dense model, or a saved model folder with the same classes."""
    if spec.teacher == "dense":
        return dense, "dense"
    folder = Path(spec.teacher)
    if not folder.is_dir():
        raise PrunetuneError(f"finetune.distill.teacher: {folder} is not a model folder; use 'dense' or a run's model/ folder")
    teacher, manifest = load_model(folder, trust_code=trust_code)
    if manifest.class_names != bundle.class_names:
        raise PrunetuneError(
            f"finetune.distill.teacher: {folder} predicts classes {manifest.class_names[:3]}... but the data has "
            f"{bundle.class_names[:3]}...; use a teacher trained on the same labels"
        )
    return teacher, str(folder)


class Distiller:
    """Builds the distillation loss for the Trainer (`loss_fn`)."""

    def __init__(self, spec, task, teacher: nn.Module, bundle, device: torch.device, label_smoothing: float,
                 augmented: bool, cache: Path | None = None) -> None:
        self.spec, self.task, self.device, self.label_smoothing = spec, task, device, label_smoothing
        self.teacher = realise(teacher).to(device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.cached: torch.Tensor | None = None
        self.teacher_s = 0.0
        # The cache is filled at the first batch, inside the first epoch's timing: a sweep's compute
        # (search/compute.py: the epochs' seconds) and a run's fine-tuning time include the teacher's pass.
        self._to_cache = bundle.train if spec.cache_logits and not augmented else None
        self._eval_batch_size = bundle.eval_batch_size
        self.cache, self.from_cache = cache, None  # the on-disk logits (a cached dense teacher only) and whether read

    @property
    def caches(self) -> bool:
        return self.cached is not None or self._to_cache is not None

    def teacher_logits(self, x: Any, idx: torch.Tensor) -> torch.Tensor:
        if self._to_cache is not None:
            t0 = time.perf_counter()
            self.cached = self._read_cache(len(self._to_cache))
            if self.cached is None:
                self.cached, _ = self.task.predict(self.teacher, self._to_cache, self._eval_batch_size, self.device)
                if self.cache is not None:  # a failed write only costs the next run the teacher's pass
                    cache_tensors({"logits": self.cached}, self.cache)
            self.teacher_s += time.perf_counter() - t0
            self._to_cache = None
        if self.cached is not None:
            return self.cached[idx].to(self.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.task.forward(self.teacher, to_device(x, self.device)).float()
        self.teacher_s += time.perf_counter() - t0
        return out.clone()  # leave inference mode: the loss needs a normal tensor

    def _read_cache(self, n: int) -> torch.Tensor | None:
        """The teacher's logits from the disk cache when they are there and cover the `n` training examples."""
        if self.cache is None or not self.cache.exists():
            return None
        try:
            logits = load_file(str(self.cache))["logits"].clone()  # not a view of a file another run may replace
        except Exception:  # a damaged or foreign cache file: run the teacher and write it again
            return None
        if logits.ndim < 1 or logits.shape[0] != n or not logits.is_floating_point():
            return None
        self.from_cache = str(self.cache)
        return logits

    def loss(self, logits: torch.Tensor, y: torch.Tensor, x: Any, idx: torch.Tensor) -> torch.Tensor:
        a, t = self.spec.alpha, self.spec.temperature
        task_loss = self.task.loss(logits, y, self.label_smoothing)
        if a == 0:
            return task_loss
        teacher = self.teacher_logits(x, idx)
        kd = F.kl_div(F.log_softmax(logits.float() / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                      reduction="batchmean", log_target=True) * (t * t)
        return (1 - a) * task_loss + a * kd

    def summary(self, teacher_name: str, teacher_score: float | None) -> dict[str, Any]:
        """The report's `distill` record; the teacher's test score in the task's metric (`teacher_test_<metric>`)."""
        return {"teacher": teacher_name, "alpha": self.spec.alpha, "temperature": self.spec.temperature,
                f"teacher_test_{self.task.metric}": teacher_score, "cached_logits": self.caches,
                "logits_from_cache": self.from_cache, "teacher_s": round(self.teacher_s, 4)}
