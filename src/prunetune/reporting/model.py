"""The typed report: what report.json (a run or a refine) and sweep.json (a sweep) hold.

One model per kind of report, told apart by `kind` ("run", "refine", "sweep"); every page and
document is chosen by it. The models read the files as written: keys they do not name are kept as
they are (extra="allow"), so a report from an older or newer prunetune still loads, renders and
dumps back unchanged. Stage records and table rows stay plain dicts: their keys depend on the task
(accuracy, perplexity, rmse, per-class accuracy, samples) and the evaluation settings.

Example:
    >>> rep = load_report({"kind": "sweep", "study": "s", "objective": "nonzero", "objective_label": "non-zero parameters",
    ...                    "tolerance": 1.0, "dense": {}, "threshold": 90.0, "rows": [], "counts": {}})
    >>> rep.kind, rep.metric
    ('sweep', 'accuracy')
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ..errors import PrunetuneError
from ..tasks import Task


class _Report(BaseModel):
    # Extra keys are data a newer (or older) version wrote: kept, never refused.
    model_config = ConfigDict(extra="allow")

    def to_dict(self) -> dict[str, Any]:
        """The report as it was read (keys it did not have are not added)."""
        return self.model_dump(exclude_unset=True)

    def metric_task(self) -> Task:
        """The task whose metric the report records: how its numbers read (units, format, direction)."""
        return Task.of_report({"metric": self.metric, "higher_is_better": getattr(self, "higher_is_better", True)})


class RunReport(_Report):
    """report.json of `prunetune run` (also a sweep's trial and balance runs)."""

    kind: Literal["run"]
    recipe: dict[str, Any]
    stages: dict[str, dict[str, Any]]  # dense / pruned / finetuned -> the stage record (measure.measure_stage)
    finetune: dict[str, Any]
    plan: list[dict[str, Any]] = []
    metric: str = "accuracy"  # reports from before tasks named their metric are classification runs
    higher_is_better: bool = True
    task: str | None = None
    speedup: dict[str, dict[str, Any]] | None = None  # per stage: ratios; `measured`: timing records
    dense: dict[str, Any] = {}
    distill: dict[str, Any] | None = None
    adaptive: dict[str, Any] | None = None
    notes: list[str] = []
    sweep: Any = None  # a sweep section to show on the page: rows (list of dicts) and a pareto_png path
    saved_model: dict[str, Any] | None = None  # transformers models: how model/ loads (artifacts.loading_entry)
    prunetune_version: str = ""
    torch_version: str = ""


class RefineReport(_Report):
    """report.json of `prunetune refine`: before / after on the new data and on the original test set."""

    kind: Literal["refine"]
    source_model: str
    recipe: dict[str, Any]
    stages: dict[str, dict[str, dict[str, Any]]]  # before / after -> new_data / original_test -> stage record
    finetune: dict[str, Any]
    sparsity_kept: bool = False
    nonzero_params: int | None = None
    metric: str = "accuracy"  # refine reports from before reports named their metric are classification
    higher_is_better: bool = True
    notes: list[str] = []
    saved_model: dict[str, Any] | None = None  # transformers models: how model/ loads (artifacts.loading_entry)
    prunetune_version: str = ""
    torch_version: str = ""


class SweepReport(_Report):
    """sweep.json of `prunetune sweep`: every trial, the Pareto front and the balance point."""

    kind: Literal["sweep"]
    study: str
    metric: str = "accuracy"  # a study from before the sweep followed the task's metric is accuracy
    higher_is_better: bool = True
    objective: str
    objective_label: str
    tolerance: float
    dense: dict[str, Any]  # the dense reference: val_<metric>, the stage record, the cache
    threshold: float
    rows: list[dict[str, Any]]
    counts: dict[str, int]
    front: list[int] = []
    balance_trial: int | None = None
    balance: dict[str, Any] | None = None
    robustness_floor: dict[str, Any] | None = None
    compute: dict[str, Any] | None = None  # dense-epoch equivalents spent (search/compute.py); older sweeps lack it
    fidelity: dict[str, Any] | None = None  # search.fidelity: setting and rule
    warm_start: dict[str, Any] | None = None  # search.warm_start: the scan and the enqueued points
    bisect: dict[str, Any] | None = None  # search.bisect: the bisection's trials and bracket (search/bisect.py)

    @property
    def key(self) -> str:
        """The rows' key of the validation metric: val_accuracy, val_perplexity, ..."""
        return f"val_{self.metric}"


Report = Annotated[Union[RunReport, RefineReport, SweepReport], Field(discriminator="kind")]
_REPORT = TypeAdapter(Report)


def load_report(source: dict[str, Any] | str | Path) -> RunReport | RefineReport | SweepReport:
    """The typed report of a report.json / sweep.json (its path or its parsed content)."""
    where = "report"
    if not isinstance(source, dict):
        where = str(source)
        try:
            source = json.loads(Path(source).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise PrunetuneError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(source, dict):
            raise PrunetuneError(f"{where}: not a prunetune report (expected a JSON object)")
    if "kind" not in source:
        # Files written before reports named their kind: a refine report names the model it refined
        # and a sweep document its study; anything else is a run. The only place a kind is guessed.
        kind = "refine" if "source_model" in source else "sweep" if "study" in source and "rows" in source else "run"
        source = {"kind": kind, **source}
    try:
        return _REPORT.validate_python(source)
    except ValidationError as e:
        err = e.errors()[0]
        at = ".".join(str(x) for x in err["loc"][1:]) or "(top level)"
        raise PrunetuneError(f"{where}: not a readable {source.get('kind')} report ({at}: {err['msg']})") from None
