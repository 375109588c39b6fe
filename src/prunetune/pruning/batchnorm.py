"""BatchNorm statistics re-estimated after pruning.

Removing channels (or zeroing weights) changes what every later layer sees, while each BatchNorm
still normalises with the dense model's running mean and variance. A forward pass over a few
training batches with cumulative averaging (torch's `swa_utils.update_bn`) gives them the pruned
network's statistics; no weight changes.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.optim.swa_utils import update_bn


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recalibrate_bn(model: nn.Module, inputs: Iterable[torch.Tensor]) -> bool:
    """Re-estimate every BatchNorm's running statistics from `inputs` (tensors already on the model's
    device). Returns False (and changes nothing) when the model has no BatchNorm or the inputs are
    not plain tensors (e.g. tokenised text, whose models normalise per example)."""
    chosen = list(inputs)
    if not chosen or not has_batchnorm(model) or not all(isinstance(x, torch.Tensor) for x in chosen):
        return False
    update_bn(chosen, model)  # restores train/eval mode and each BatchNorm's momentum
    return True
