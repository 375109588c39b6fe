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

The slack rule of objective.py (`search.early_stop_slack`) still applies first: it is a feasibility
rule (the trial cannot recover), the halving a ranking rule (other trials did better at this epoch).
"""

from __future__ import annotations

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
        return Rung(self.study, t)


class Rung:
    """One sweep trial's reports: `report` says whether the pruner stops it; `close` records the outcome."""

    def __init__(self, study, trial) -> None:
        self.study, self.trial, self.last = study, trial, None

    def report(self, value: float, epoch: int, last: bool) -> bool:
        self.trial.report(value, epoch)
        self.last = value
        return not last and self.trial.should_prune()

    def close(self, state: str) -> None:
        from optuna.trial import TrialState

        if state == "complete" and self.last is not None:
            self.study.tell(self.trial, self.last)
        else:
            self.study.tell(self.trial, state=TrialState.PRUNED if state == "pruned" else TrialState.FAIL)


def describe(fidelity: str) -> dict[str, Any]:
    """How the report names the fidelity setting."""
    rule = {"full": "every trial runs all its fine-tuning epochs (stopped only by search.early_stop_slack)",
            "halving": f"successive halving over fine-tuning epochs (reduction factor {REDUCTION_FACTOR}) on the excess drop",
            "hyperband": f"Hyperband over fine-tuning epochs (reduction factor {REDUCTION_FACTOR}) on the excess drop"}
    return {"setting": fidelity, "rule": rule[fidelity]}
