"""SparseGPT (Frantar & Alistarh 2023): one-shot pruning that reconstructs the weights it keeps.

For a linear layer with inputs X (calibration tokens) the Hessian of the layer-wise squared error
||WX - W'X||^2 is H = 2 X X^T. Columns are swept left to right in blocks of 128: in each block the
weights with the smallest w^2 / [H^-1]_jj^2 are pruned (per block for unstructured masks, per group
of M columns for N:M), and the error each pruned column leaves is propagated onto the columns not yet
visited, through the upper Cholesky factor of H^-1 (Algorithm 1 of the paper; the reference code is
IST-DASLab/sparsegpt, sparsegpt.py). Dampening: 1 % of the mean diagonal; inputs that were always
zero (diag 0) get a unit diagonal and their weights are set to zero, as in the reference.

`reconstruct` is the per-layer algorithm on a weight as rows [out, in]; `sequential.py` feeds it one
transformer block at a time; the registered `sparsegpt` importance lets the `unstructured` and `nm`
pruners use it (the controller runs it, then the pruner's masks and the layer's weights hold the result).

Example:
    >>> import torch
    >>> w, x = torch.randn(4, 8), torch.randn(8, 64)
    >>> new, keep = reconstruct(w, 2 * x @ x.t(), sparsity=0.5)
    >>> int(keep.sum()), bool((new[~keep] == 0).all())
    (16, True)
"""

from __future__ import annotations

import torch

from ..errors import PrunetuneError
from ..registry import IMPORTANCES
from .importance import Importance

BLOCKSIZE = 128
PERCDAMP = 0.01


def _inverse_cholesky(h: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp I)^-1, in float64; the dampening grows until H is positive definite."""
    h = h.double()
    diag = torch.arange(h.shape[0])
    damp = percdamp * float(torch.mean(torch.diag(h)))
    for _ in range(6):
        damped = h.clone()
        damped[diag, diag] += damp
        lower, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
        damp = max(damp * 10, 1e-8)
    raise PrunetuneError("prune.importance: sparsegpt could not invert a layer's calibration Hessian; give more "
                         "prune.calibration_batches or use wanda")


def _block_counts(columns: int, rows: int, sparsity: float, blocksize: int) -> list[int]:
    """Weights pruned in each column block: the rounding is carried over, so the layer's total is exactly
    round(sparsity * rows * columns)."""
    counts, done = [], 0
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        upto = int(round(sparsity * rows * i2))
        counts.append(upto - done)
        done = upto
    return counts


@torch.no_grad()
def reconstruct(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float = 0.0, n: int = 0, m: int = 0,
                pruned: torch.Tensor | None = None, blocksize: int = BLOCKSIZE,
                percdamp: float = PERCDAMP, name: str = "a layer") -> tuple[torch.Tensor, torch.Tensor]:
    """(new weight, keep mask) for `weight` [out, in] given its inputs' Hessian [in, in].

    Unstructured with `sparsity` (exactly round(sparsity * numel) weights pruned; chosen per column
    block), or N:M with `n`, `m` (keep n of every m consecutive inputs of each row). `pruned` (bool,
    like `weight`) are weights that must stay pruned (an earlier step's mask): they are pruned first."""
    rows, columns = weight.shape
    if m and (columns % m or blocksize % m):
        raise PrunetuneError(f"prune.m: sparsegpt cannot make the {columns} inputs of {name} {n}:{m} (M must divide "
                             f"them and {blocksize}); choose another M or exclude {name}")
    if not m and not (0 <= sparsity < 1):
        raise PrunetuneError(f"prune.sparsity: sparsegpt cannot prune {name} to {sparsity}; give a fraction in [0, 1)")
    W = weight.detach().float().clone().contiguous()
    H = hessian.detach().float().clone()
    forced = torch.zeros_like(W, dtype=torch.bool) if pruned is None else pruned.to(W.device).bool().contiguous()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv = _inverse_cholesky(H, percdamp).float()
    counts = _block_counts(columns, rows, sparsity, blocksize) if not m else []
    drop = torch.zeros_like(W, dtype=torch.bool)
    for b, i1 in enumerate(range(0, columns, blocksize)):
        i2 = min(i1 + blocksize, columns)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d1 = torch.diag(Hinv1)
        f1 = forced[:, i1:i2]
        if not m:  # adaptive mask selection: this block's lowest w^2 / d^2 (earlier masks first)
            score = (W1 ** 2 / d1.reshape(1, -1) ** 2).masked_fill(f1, float("-inf"))
            mask1 = torch.zeros(f1.shape, dtype=torch.bool, device=f1.device)
            mask1.view(-1)[torch.argsort(score.flatten(), stable=True)[:counts[b]]] = True
            mask1 |= f1
        else:
            mask1 = f1.clone()
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            if m and i % m == 0:  # N:M: the group's choice uses the weights as updated so far
                score = (W1[:, i:i + m] ** 2 / d1[i:i + m].reshape(1, -1) ** 2).masked_fill(f1[:, i:i + m], float("-inf"))
                mask1.scatter_(1, i + torch.topk(score, m - n, dim=1, largest=False).indices, True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        drop[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W.to(weight.dtype), ~drop


@IMPORTANCES.register("sparsegpt")
class SparseGPT(Importance):
    """SparseGPT (Frantar & Alistarh 2023): masks chosen with second-order information and the kept weights
    reconstructed to preserve each layer's outputs on `prune.calibration_batches` training batches.

    Unstructured (per layer, `prune.scope layer`) or N:M; linear layers (nn.Linear, GPT-2's Conv1D).
    Transformer blocks are calibrated one at a time on the outputs of the already pruned blocks."""

    reconstructs = True  # the controller runs `sequential.reconstruct_model` instead of ranking scores
    methods = ("unstructured", "nm")

    def scores(self, weight, grad):
        raise PrunetuneError("prune.importance: sparsegpt chooses masks while it reconstructs the weights; it runs "
                             "through the controller with prune.method unstructured or nm")

    def module_scores(self, module, weight, grad):
        return self.scores(weight, grad)

    def structured(self):
        raise PrunetuneError("prune.importance: sparsegpt masks weights (prune.method unstructured or nm); use l1, l2, "
                             "taylor or wanda for structured pruning")
