"""Multi-fidelity trials (`search.fidelity`): Optuna's successive halving or Hyperband over fine-tuning
epochs, the resource.

The sweep's study is multi-objective (validation metric, cost) and Optuna's `trial.report` /
`trial.should_prune` refuse multi-objective studies, so the rungs live in a single-objective companion
study in the same storage (`<study>.fidelity`, minimised): every sweep trial opens one companion trial,
reports one value per fine-tuning epoch there and asks its pruner. The value is the trial's *excess
drop*: how much further than `search.tolerance` its validation metric is from the dense model's, in
the metric's units (0 while within the tolerance). A ranking on the raw metric would halve away
exactly the cheap, sparse trials the balance point is looking for; on the excess drop every trial that
is currently within the tolerance ties at 0 and is always promoted, and only trials outside it are
ranked against each other. A trial's last epoch is reported but never pruned on (nothing is saved).

Early epochs understate where a pruned model ends: under the decaying schedule the small CNN's validation
accuracy gains 2.0-2.4 pt from epoch 1 to epoch 3 at every amount from channels -50 % to -75 %
(benchmarks/results/ft_seeds.json), so on the raw excess drop the halving at epoch 1 kept only the least
pruned trials. A trial is therefore always promoted while its drop, less the median recovery this
study's completed trials made from the same epoch to their last, is within the tolerance; only the
others are left to the pruner's ranking (which still sees every trial's uncredited value).

The slack rule of objective.py (`search.early_stop_slack`) still applies first: it is a feasibility
rule (the trial cannot recover), the halving a ranking rule (other trials did better at this epoch).
"""

from __future__ import annotations

import statistics
import warnings
from typing import Any

from .storage import optuna_module

REDUCTION_FACTOR = 3  # fine-tuning runs a few epochs: rungs at epochs 1, 3, 9
SUFFIX = ".fidelity"


def excess_drop(drop: float, tolerance: float) -> float:
    """The halving's value (minimised): how far beyond the tolerance a drop versus dense is; 0 within it."""
    return max(0.0, float(drop) - float(tolerance))


def pruner(fidelity: str):
    """The Optuna pruner search.fidelity names (None for "full")."""
    optuna = optuna_module()
    if fidelity == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=REDUCTION_FACTOR)
    if fidelity == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto", reduction_factor=REDUCTION_FACTOR)
    return None


class Rungs:
    """The companion study of a sweep: one companion trial per sweep trial."""

    def __init__(self, storage, study_name: str, fidelity: str) -> None:
        optuna = optuna_module()
        self.fidelity = fidelity
        self.study = optuna.create_study(storage=storage, study_name=study_name + SUFFIX, direction="minimize",
                                         pruner=pruner(fidelity), load_if_exists=True)

    def start(self, number: int) -> "Rung":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna warns that heartbeats are meant for Study.optimize; not used here
            t = self.study.ask()
        t.set_user_attr("sweep_trial", number)
        return Rung(self, t)

    def recovery(self, epoch: int) -> float:
        """The median drop that this study's completed trials recovered from `epoch` to their last epoch
        (metric units, never negative; 0 before any trial has completed past `epoch`)."""
        from optuna.trial import TrialState

        gains = [d[epoch - 1] - d[-1] for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if len(d := t.user_attrs.get("drops") or []) > epoch]
        return max(0.0, statistics.median(gains)) if gains else 0.0


class Rung:
    """One sweep trial's reports: `report` says whether the pruner stops it; `close` records the outcome."""

    def __init__(self, rungs: Rungs, trial) -> None:
        self.rungs, self.study, self.trial = rungs, rungs.study, trial
        self.last, self.drops, self.credit = None, [], 0.0

    def report(self, drop: float, tolerance: float, epoch: int, last: bool) -> bool:
        """Report the drop versus dense after `epoch`; True when the trial should stop here."""
        value = excess_drop(drop, tolerance)
        self.trial.report(value, epoch)
        self.drops.append(float(drop))
        self.trial.set_user_attr("drops", self.drops)
        self.last = value
        if last:
            return False
        prune = self.trial.should_prune()  # asked in any case: the pruner records this trial's value at the rung
        self.credit = self.rungs.recovery(epoch)
        return prune and drop - self.credit > tolerance

    def close(self, state: str) -> None:
        from optuna.trial import TrialState

        if state == "complete" and self.last is not None:
            self.study.tell(self.trial, self.last)
        else:
            self.study.tell(self.trial, state=TrialState.PRUNED if state == "pruned" else TrialState.FAIL)


def describe(fidelity: str) -> dict[str, Any]:
    """How the report names the fidelity setting."""
    rule = {"full": "every trial runs all its fine-tuning epochs (stopped only by search.early_stop_slack)",
            "halving": f"successive halving over fine-tuning epochs (reduction factor {REDUCTION_FACTOR}) on the excess drop; "
                       "promoted while the drop less completed trials' median later recovery is within the tolerance",
            "hyperband": f"Hyperband over fine-tuning epochs (reduction factor {REDUCTION_FACTOR}) on the excess drop; "
                         "promoted while the drop less completed trials' median later recovery is within the tolerance"}
    return {"setting": fidelity, "rule": rule[fidelity]}
