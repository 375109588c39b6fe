"""What to prune: importance criteria, each usable per weight (masks) and per channel group (Torch-Pruning).

Example:
    >>> import torch
    >>> L1Magnitude().scores(torch.tensor([-3.0, 1.0]), None).tolist()
    [3.0, 1.0]
"""

from __future__ import annotations

import torch

from ..errors import PrunetuneError
from ..registry import IMPORTANCES
from .layers import layer_type_of


class Importance:
    """Scores units: higher means keep. `needs_grad` asks the controller for calibration gradients,
    `needs_activations` for the input norms of the target layers (`norms`, keyed by module)."""

    needs_grad = False
    needs_activations = False

    def scores(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def module_scores(self, module, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        """Per-weight scores of `module`'s weight (shaped like it); activation-aware criteria use `module`."""
        return self.scores(weight, grad)

    def structured(self):
        """The Torch-Pruning importance that scores coupled channel groups the same way."""
        raise NotImplementedError


@IMPORTANCES.register("l1")
class L1Magnitude(Importance):
    """|w|; channel groups by L1 norm (per weight it ranks exactly like l2)."""

    def scores(self, weight, grad):
        return weight.detach().abs()

    def structured(self):
        import torch_pruning as tp

        return tp.importance.GroupMagnitudeImportance(p=1)


@IMPORTANCES.register("l2")
class L2Magnitude(Importance):
    """w^2; channel groups by L2 norm."""

    def scores(self, weight, grad):
        return weight.detach().pow(2)

    def structured(self):
        import torch_pruning as tp

        return tp.importance.GroupMagnitudeImportance(p=2)


@IMPORTANCES.register("taylor")
class Taylor(Importance):
    """First-order Taylor |w * dL/dw| from a few calibration batches (Molchanov et al. 2019)."""

    needs_grad = True

    def scores(self, weight, grad):
        if grad is None:
            raise RuntimeError("taylor importance needs gradients; the controller computes them")
        return (weight.detach() * grad.detach()).abs()

    def structured(self):
        import torch_pruning as tp

        return tp.importance.GroupTaylorImportance()


@IMPORTANCES.register("random")
class RandomImportance(Importance):
    """Uniform random scores: the control every pruning paper reports."""

    def scores(self, weight, grad):
        return torch.rand(weight.shape)

    def structured(self):
        import torch_pruning as tp

        return tp.importance.RandomImportance()


@IMPORTANCES.register("lamp")
class LAMP(Importance):
    """Layer-adaptive magnitude (Lee et al. 2021): w^2 over the sum of w^2 of the layer's larger weights.

    Scores are comparable across layers, so a global ranking keeps every layer usable at high sparsity.
    """

    def scores(self, weight, grad):
        sq = weight.detach().float().pow(2).flatten()
        order = torch.argsort(sq)
        sorted_sq = sq[order]
        # Sum over this weight and every larger one in its layer (suffix sum of the ascending order).
        suffix = sorted_sq.flip(0).cumsum(0).flip(0)
        out = torch.empty_like(sq)
        out[order] = sorted_sq / suffix.clamp_min(1e-30)
        return out.view_as(weight)

    def structured(self):
        import torch_pruning as tp

        return tp.importance.LAMPImportance(p=2)


@IMPORTANCES.register("wanda")
class Wanda(Importance):
    """Wanda (Sun et al. 2023): |w| times the L2 norm of its input feature over calibration tokens.

    Magnitude weighted by how large the inputs it multiplies are, from `prune.calibration_batches` batches.

    Per weight (unstructured, N:M); for structured pruning of language models the unit's weights are
    summed (heads, MLP neurons); other structured pruning is refused."""

    needs_activations = True

    def __init__(self) -> None:
        self.norms: dict = {}  # module -> [input features] L2 norms, set by the controller

    def scores(self, weight, grad):
        raise RuntimeError("wanda importance needs input activations; the controller collects them")

    def module_scores(self, module, weight, grad):
        lt = layer_type_of(module)
        if lt is None or getattr(lt, "weights", None) is not None:  # recurrent layers: the hidden-state weights see no layer input
            raise PrunetuneError(f"prune.importance: wanda scores linear and convolution weights, not a "
                                 f"{type(module).__name__}; use l1 or l2, or exclude the layer")
        norm = self.norms.get(module)
        if norm is None:
            raise PrunetuneError(f"prune.importance: wanda saw no input reach a {type(module).__name__} layer during "
                                 "calibration; use l1 or l2, or exclude the layer")
        rows = lt.to_rows(weight.detach().abs().float())
        if rows.shape[-1] != norm.numel():
            raise PrunetuneError(f"prune.importance: wanda cannot pair the {rows.shape[-1]} inputs of a "
                                 f"{type(module).__name__} weight with {norm.numel()} input features; use l1 or l2")
        return lt.from_rows(rows * norm.to(rows.device, rows.dtype), weight.shape)

    def structured(self):
        raise PrunetuneError("prune.importance: wanda with structured pruning is supported for causal language models "
                             "(heads and MLP neurons); use l1, l2 or taylor here")
