"""When to prune: a schedule turns (target sparsity, fine-tuning epochs) into phases.

Each phase prunes to `sparsity` (if given), then fine-tunes `epochs` epochs, pruning again at
each `(fraction of the phase, sparsity)` event on the way.

The recipe checks two attributes a schedule may carry: `rolls_back` (the model may be rolled back
to an earlier step; default False), `prunes_during_finetuning` (False when pruning happens once,
before fine-tuning; default True) and `regrows` (during fine-tuning pruned weights are grown back
while as many kept ones are dropped, at the same sparsity; default False).

Example:
    >>> from prunetune.recipe import PruneSpec
    >>> [p.sparsity for p in iterative(PruneSpec(sparsity=0.75, schedule={"kind": "iterative", "steps": 2}), 3)]
    [0.5, 0.75]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import PrunetuneError
from ..registry import SCHEDULES


@dataclass
class Phase:
    sparsity: float | None
    epochs: int
    events: list[tuple[float, float]] = field(default_factory=list)


def all_sparsities(phases: list[Phase]) -> list[float]:
    """Every pruning target in the order the controller will apply them."""
    out: list[float] = []
    for p in phases:
        if p.sparsity is not None:
            out.append(p.sparsity)
        out.extend(s for _, s in p.events)
    return out


@SCHEDULES.register("oneshot")
def oneshot(spec, epochs: int) -> list[Phase]:
    """Prune once to the target, then fine-tune."""
    return [Phase(spec.sparsity, epochs)]


oneshot.prunes_during_finetuning = False


@SCHEDULES.register("iterative")
def iterative(spec, epochs: int) -> list[Phase]:
    """k rounds: prune a step (the same fraction of what remains each round), fine-tune, repeat."""
    k = spec.schedule.steps
    keep = 1.0 - spec.sparsity
    phases = []
    for r in range(1, k + 1):
        s = round(1.0 - keep ** (r / k), 6) if r < k else spec.sparsity
        phases.append(Phase(s, spec.schedule.epochs_per_step if r < k else epochs))
    return phases


def cubic_sparsity(step: int, steps: int, s_initial: float, s_final: float) -> float:
    """Zhu & Gupta 2017: s_t = s_f + (s_i - s_f) (1 - t / n)^3 for t = 0..n."""
    return s_final + (s_initial - s_final) * (1.0 - step / steps) ** 3


@SCHEDULES.register("gradual")
def gradual(spec, epochs: int) -> list[Phase]:
    """Cubic gradual pruning during fine-tuning (Zhu & Gupta 2017), from `start` to `end` of it."""
    sch = spec.schedule
    if epochs < 1:
        raise PrunetuneError("finetune.epochs: gradual pruning happens during fine-tuning; set it to 1 or more")
    if sch.initial_sparsity >= spec.sparsity:
        raise PrunetuneError(
            f"prune.schedule.initial_sparsity ({sch.initial_sparsity}) must be below prune.sparsity ({spec.sparsity})"
        )
    events = []
    if sch.initial_sparsity > 0:
        events.append((sch.start, sch.initial_sparsity))
    for j in range(1, sch.steps + 1):
        frac = sch.start + (sch.end - sch.start) * j / sch.steps
        events.append((frac, round(cubic_sparsity(j, sch.steps, sch.initial_sparsity, spec.sparsity), 6)))
    return [Phase(None, epochs, events)]


@SCHEDULES.register("dynamic")
def dynamic(spec, epochs: int) -> list[Phase]:
    """Prune once to the target, then `steps` drop-and-grow steps from `start` to `end` of fine-tuning, each
    tensor keeping its count: the smallest kept weights out, as many pruned ones with the largest gradient
    in, from zero (RigL, Evci et al. 2020). Unstructured pruning with full fine-tuning."""
    sch = spec.schedule
    if epochs < 1:
        raise PrunetuneError("finetune.epochs: the dynamic schedule drops and grows weights during fine-tuning; set it to 1 or more")
    events = [(sch.start + (sch.end - sch.start) * j / sch.steps, spec.sparsity) for j in range(1, sch.steps + 1)]
    return [Phase(spec.sparsity, epochs, events)]


dynamic.regrows = True


@SCHEDULES.register("adaptive")
def adaptive(spec, epochs: int) -> list[Phase]:
    """Raise sparsity step by step (as iterative) while validation accuracy stays within
    `schedule.tolerance` of the dense model's; roll back to the last good step and stop when it
    does not recover within `schedule.patience` extra epochs. `prune.sparsity` is the ceiling."""
    k = spec.schedule.steps
    keep = 1.0 - spec.sparsity
    per = max(1, spec.schedule.epochs_per_step)
    return [Phase(round(1.0 - keep ** (r / k), 6) if r < k else spec.sparsity, per) for r in range(1, k + 1)]


adaptive.rolls_back = True
