"""The recipe's schema: one pydantic model per section, and the whole-recipe checks, which ask the
registered pieces (a fine-tuning method, a schedule, a pruner, the task) what they support.

Example:
    >>> Recipe.model_validate({"prune": {"sparsity": 0.75}}).prune.sparsity
    0.75
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ..data_spec import DataSpec
from ..finetune.options import DROP_FOREIGN, method_options
from ..models.hf import model_family
from .. import registry as R
from ..registry import FINETUNE_METHODS
from .prune_spec import DepthSpec, PruneSpec, ScheduleSpec, _Section  # noqa: F401  (re-exported)


class ModelSpec(_Section):
    """Which architecture to build."""

    name: str = Field("small_cnn", description="built-in name, 'torchvision:NAME', 'timm:NAME' or 'package.module:function'")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the model factory")
    trust_code: bool = Field(False, description="allow importing a user's own model factory by import path")


class EarlyStopping(_Section):
    patience: int = Field(3, ge=1, description="epochs without improvement of validation accuracy before stopping")
    min_delta: float = Field(0.0, ge=0)


class AugmentSpec(_Section):
    """Random image augmentation of training batches (none by default)."""

    crop_padding: int = Field(0, ge=0, description="random crop after zero-padding each side by this many pixels")
    hflip: bool = Field(False, description="flip half the images horizontally")

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.hflip


class DistillSpec(_Section):
    """Knowledge distillation from a teacher while fine-tuning."""

    teacher: str = Field("dense", description="'dense' (the run's dense model) or a saved model folder")
    # 0.7 with T 4: the setting measured over fine-tuning seeds (benchmarks/results/ft_seeds.md).
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the distillation term")
    temperature: float = Field(4.0, gt=0, description="softmax temperature T")
    cache_logits: bool = Field(True, description="compute the teacher's logits once per example (not with augmentation)")


class TrainSpec(_Section):
    """How to train (dense) or fine-tune."""

    epochs: int = Field(3, ge=0)
    batch_size: int = Field(128, gt=0)
    optimizer: str = "adamw"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    lr_schedule: str = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this value")
    dropout: float | None = Field(None, ge=0, lt=1, description="override every dropout layer's rate")
    early_stopping: EarlyStopping | None = None
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    checkpoint_every_steps: int | None = Field(
        None, gt=0, description="fine-tuning: also checkpoint every this many steps (always at each epoch end)")


class DenseSpec(TrainSpec):
    """How the starting (dense) model is obtained."""

    source: Literal["train", "file"] = "train"
    path: str | None = Field(None, description="safetensors file with the trained weights (source: file)")
    cache: bool = True
    # 4 epochs keep the built-in default job under 10 minutes on 2 CPU cores; benchmarks use 10.
    epochs: int = Field(4, ge=0)
    lr: float = Field(2e-3, gt=0)
    warmup_epochs: float = Field(0.5, ge=0)

    @model_validator(mode="after")
    def _path_for_file(self) -> "DenseSpec":
        if self.source == "file" and not self.path:
            raise ValueError("source 'file' needs dense.path (a .safetensors file)")
        return self



class FinetuneSpec(TrainSpec):
    """How the pruned model is fine-tuned back."""

    method: str = Field("full", description="registered method: full, bitfit, lora, ia3, prompt_tuning, adapter")
    # The key keeps its old name (saved recipes, manifests and checkpoints use it); after validation
    # it holds the method's options instance (`Method.options`).
    peft: Any = Field(default_factory=dict, validate_default=True,
                      description="the options of finetune.method, validated by that method's options model")
    # 2e-3 with a 0.2-epoch warm-up: the best validation accuracy of the one-ingredient ablation
    # (benchmarks/results/peer_glue.md; channels -75 %: +0.40 pt val over 1e-3 without warm-up).
    lr: float = Field(2e-3, gt=0)
    warmup_epochs: float = Field(0.2, ge=0)
    epochs: int = Field(3, ge=0)
    # 32 rather than training's 128: four times the steps in the same epoch budget. Small CNN, 3 epochs,
    # three fine-tuning seeds (benchmarks/results/ft_seeds.md): +0.29 pt val at channels -75 %, +0.08 at -50 %.
    batch_size: int = Field(32, gt=0)
    seed: int | None = Field(None, ge=0, lt=2**32, description=(
        "seeds the order of fine-tuning batches (default: the recipe's seed + 1); another value repeats "
        "fine-tuning on the same data split and dense model"))
    # auto distils where fine-tuning seeds favoured it on validation and the teacher's logits can be cached
    # (benchmarks/results/ft_seeds.md): channel pruning of an image classifier, fully fine-tuned, without
    # augmentation (FinetuneSpec.distillation).
    distill: Any = Field("auto", description=(
        "distil from a teacher: a section (teacher, alpha, temperature); auto (default) distils from the dense "
        "model after channel pruning of an image classifier, fully fine-tuned without augmentation; null: never"))

    def distillation(self, task: Any, bundle: Any, prune_method: str) -> DistillSpec | None:
        """The distillation the run does: `distill` as set, or for `auto` (the default) a teacher with
        DistillSpec's defaults where fine-tuning seeds favoured one on validation and its logits are
        computed once (benchmarks/results/ft_seeds.md): channel (structured) pruning of an image
        classifier, fully fine-tuned, without augmentation. Unstructured pruning (level on validation with
        and without), text classifiers (no validation evidence yet), PEFT methods, augmented data (the
        teacher would run on every batch), regression and language models are not distilled unless asked."""
        if self.distill != "auto":
            return self.distill
        images = (bundle.preprocess or {}).get("kind") == "image"
        wanted = task.distils and images and prune_method == "structured" and self.method == "full"
        return DistillSpec() if wanted and not self.augment.active else None

    @property
    def distill_section(self) -> DistillSpec | None:
        """The distillation section the recipe sets itself (None for auto and for null)."""
        return self.distill if isinstance(self.distill, DistillSpec) else None

    @field_validator("distill")
    @classmethod
    def _distill(cls, v: Any) -> DistillSpec | str | None:
        """auto, null or a DistillSpec; the section's errors are pydantic's, under finetune.distill."""
        if v is None or v == "auto" or isinstance(v, DistillSpec):
            return v
        if isinstance(v, dict):
            return DistillSpec.model_validate(v)
        raise ValueError(f"{v!r} is not a setting; use auto, null (no distillation) or a section such as {{alpha: 0.7}}")

    @field_validator("peft")
    @classmethod
    def _method_options(cls, v: Any, info: ValidationInfo) -> Any:
        method = info.data.get("method")
        if method not in FINETUNE_METHODS:
            return v  # an unknown finetune.method is refused by the whole-recipe check, naming the choices
        return method_options(method, v, drop_foreign=bool((info.context or {}).get(DROP_FOREIGN)))


class RobustnessSpec(_Section):
    """Accuracy under Gaussian input noise and FGSM / PGD attacks (images only; needs `prunetune[robust]`).

    Strengths are in pixel units of the [0, 1] range (0.1 = a tenth of the pixel range), whatever the
    data's normalisation; attacked and noisy images are clipped to valid pixels."""

    noise: list[float] = Field(default_factory=list, description="Gaussian noise sigmas, pixel units of [0, 1]; noisy images are clipped to [0, 1]")
    fgsm: list[float] = Field(default_factory=list, description="FGSM epsilons (L-inf), pixel units of [0, 1]")
    pgd: list[float] = Field(default_factory=list, description="PGD epsilons (L-inf), pixel units of [0, 1]")
    pgd_steps: int = Field(10, ge=1, le=1000, description="PGD iterations")
    pgd_step_size: float | None = Field(
        None, gt=0, le=1, description="PGD step as a fraction of epsilon (default 2.5 / pgd_steps, Madry et al.)")
    pgd_random_init: int = Field(1, ge=0, le=100, description="PGD random starts inside the ball (0: start at the image)")
    examples: int = Field(1000, ge=1, description="test examples measured: a seeded, class-balanced subset (all when fewer)")
    seed: int = Field(0, ge=0, lt=2**32, description="seeds the subset, the noise and PGD's random start")

    @field_validator("noise", "fgsm", "pgd", mode="before")
    @classmethod
    def _listed(cls, v: Any) -> Any:
        return [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @field_validator("noise", "fgsm", "pgd")
    @classmethod
    def _strengths(cls, v: list[float], info) -> list[float]:
        for x in v:
            if not (math.isfinite(x) and x >= 0):
                raise ValueError(f"strengths must be >= 0 (got {x}); they are pixel units of the [0, 1] range")
            if info.field_name != "noise" and x > 1:
                raise ValueError(f"epsilon {x} is more than the whole [0, 1] pixel range; use a value <= 1")
        return sorted(set(v))

    @model_validator(mode="after")
    def _some(self) -> "RobustnessSpec":
        if not (self.noise or self.fgsm or self.pgd):
            raise ValueError("give at least one of noise, fgsm, pgd (e.g. fgsm: [0.05])")
        return self


class EvaluateSpec(_Section):
    """What is measured at every stage."""

    latency_batch: int = Field(64, ge=1)
    sequence_length: int | None = Field(None, ge=1, description="text: tokens per sequence for latency and memory (default: real lengths)")
    threads: int | None = Field(None, ge=1, description="CPU threads for latency (default: torch's)")
    min_run_time: float = Field(1.0, gt=0, description="seconds of timing per latency measurement (per model when two are timed alternately)")
    latency_rounds: int = Field(5, ge=2, le=50, description="speedups: rounds of alternating dense / candidate timing "
                                "(each min_run_time / rounds seconds per model); more rounds, a fairer interval")
    latency: bool = True
    memory: bool = True
    device: str | None = Field(None, description="cpu or cuda (default: cuda when present)")
    generate: int = Field(3, ge=0, le=100, description="causal_lm: greedy generations from test prompts shown per stage (0: none)")
    max_new_tokens: int = Field(20, ge=1, le=1024, description="causal_lm: tokens generated per sample")
    robustness: RobustnessSpec | None = Field(None, description="accuracy under input noise and FGSM / PGD attacks (images)")
    metric: str | None = Field(
        None, description="the validation metric that the tolerances, early stopping, the best epoch, the adaptive schedule "
        "and the sweep follow (default: the task's; classification: accuracy or macro_f1)")


class RobustnessFloor(_Section):
    """`prunetune sweep`: a trial is infeasible when its validation accuracy under this condition is below the floor."""

    attack: Literal["noise", "fgsm", "pgd"]
    strength: float = Field(ge=0, description="sigma or epsilon, pixel units of [0, 1]; must be listed in evaluate.robustness")
    min_accuracy: float = Field(ge=0, le=100, description="lowest acceptable validation accuracy (%) under that condition")


class SearchSpec(_Section):
    """`prunetune sweep`: which recipe fields to search, the tolerance on the task's metric and the cost to minimise."""

    space: dict[str, Any] = Field(
        default_factory=dict,
        description="dotted recipe field -> [low, high] (float or int range), {low, high, log: true}, or {choices: [...]}")
    tolerance: float = Field(
        0.5, ge=0, description="how much worse than the dense model the balance point may be on validation, in the task "
        "metric's units (accuracy points, perplexity, RMSE)")
    objective: Literal["latency", "nonzero", "size", "macs"] = Field(
        "latency", description="cost to minimise: measured p50 latency at evaluate.latency_batch relative to the dense model's "
        "(both measured in the trial), non-zero parameters, gzip bytes or MACs")
    sampler: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    trials: int = Field(20, ge=0, description="finished trials the study aims for (all workers together)")
    grid_points: int = Field(3, ge=2, description="grid sampler: points per numeric range")
    early_stop_slack: float = Field(
        2.0, ge=0, description="stop a trial after a fine-tuning epoch when its validation metric is worse than the dense "
        "model's by more than tolerance + slack x (epochs left), in the task metric's units")
    heartbeat_s: int = Field(10, ge=1, description="worker heartbeat; a trial silent for 3 heartbeats is failed and retried")
    retries: int = Field(2, ge=0, description="times a failed (killed) trial is retried")
    robustness_floor: RobustnessFloor | None = Field(
        None, description="constraint: trials whose robust validation accuracy is below it are infeasible")
    fidelity: Literal["full", "halving", "hyperband"] = Field(
        "full", description="full: every trial runs all its fine-tuning epochs; halving / hyperband: Optuna's successive "
        "halving or Hyperband over fine-tuning epochs stops trials whose drop beyond the tolerance ranks poorly at an "
        "epoch (full by default: halving ranks early epochs, and pruned models often recover late)")
    budget_dense_epochs: float | None = Field(
        None, gt=0, description="stop launching trials once the sweep has spent this much compute, in dense training "
        "epochs (fine-tuning seconds over the dense model's seconds per training epoch), and stop a running trial "
        "before an epoch that would pass it")
    warm_start: str | None = Field(
        None, description="sensitivity.json of prunetune sensitivity: the prune.sparsity its additive prediction puts "
        "within the tolerance before fine-tuning is where the bisection starts (search.bisect: 0: the first trials are "
        "enqueued there and a step either side)")
    bisect: int = Field(
        3, ge=0, description="the first trials bisect prune.sparsity (a float range in search.space) between the largest "
        "amount within the tolerance and the smallest outside it, other searched fields at the recipe's values; then the "
        "sampler takes over (0: off; the grid sampler: off)")


class Recipe(_Section):
    """A whole run: model, data, dense, prune, finetune, evaluate."""

    name: str = "default"
    seed: int = Field(0, ge=0, lt=2**32, description="seeds data splits, initialisation and shuffling (numpy takes 0 to 2**32 - 1)")
    task: str = "classification"
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    dense: DenseSpec = Field(default_factory=DenseSpec)
    prune: PruneSpec = Field(default_factory=PruneSpec)
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    search: SearchSpec | None = Field(None, description="search space for `prunetune sweep`")

    @property
    def finetune_seed(self) -> int:
        """The seed of the fine-tuning batches' order: `finetune.seed`, else the recipe's seed + 1."""
        return self.seed + 1 if self.finetune.seed is None else self.finetune.seed

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\\0") or v in {".", ".."}:
            raise ValueError("name must be a plain folder name (no '/', '\\' or '..')")
        return v

    @model_validator(mode="after")
    def _registered(self) -> "Recipe":
        self.prune.fill_defaults(model_family(self.model.name))
        for field, reg, value in [
            ("task", R.TASKS, self.task),
            ("prune.method", R.PRUNERS, self.prune.method),
            ("prune.importance", R.IMPORTANCES, self.prune.importance),
            ("prune.schedule.kind", R.SCHEDULES, self.prune.schedule.kind),
            ("finetune.method", R.FINETUNE_METHODS, self.finetune.method),
            ("finetune.optimizer", R.OPTIMIZERS, self.finetune.optimizer),
            ("dense.optimizer", R.OPTIMIZERS, self.dense.optimizer),
            ("finetune.lr_schedule", R.LR_SCHEDULES, self.finetune.lr_schedule),
            ("dense.lr_schedule", R.LR_SCHEDULES, self.dense.lr_schedule),
        ]:
            if value not in reg:
                raise ValueError(f"{field}: unknown {reg.kind} {value!r}; choose one of: {', '.join(reg.names())}")
        method = R.FINETUNE_METHODS.get(self.finetune.method)
        schedule = R.SCHEDULES.get(self.prune.schedule.kind)
        if getattr(schedule, "rolls_back", False) and not method.follows_rollback:
            able = [n for n in R.FINETUNE_METHODS.names() if R.FINETUNE_METHODS.get(n).follows_rollback]
            raise ValueError(f"prune.schedule.kind {self.prune.schedule.kind} rolls the model back, which finetune.method "
                             f"{self.finetune.method!r} cannot follow; use {' or '.join(able)}")
        # An unmasked pruner removes channels: it changes the shapes of the layers it prunes.
        if (not R.PRUNERS.get(self.prune.method).masked and getattr(schedule, "prunes_during_finetuning", True)
                and not method.resizable):
            raise ValueError(
                f"finetune.method {self.finetune.method!r} adds modules that structured pruning during fine-tuning "
                "cannot resize; use prune.schedule.kind oneshot or finetune.method full"
            )
        method.check(self)
        R.TASKS.get(self.task).check_recipe(self)  # e.g. causal_lm: lm_text data, and what language models support
        pruner = R.PRUNERS.get(self.prune.method)
        floor = self.search.robustness_floor if self.search else None
        if floor is not None:
            rob = self.evaluate.robustness
            listed = getattr(rob, floor.attack) if rob else []
            if not any(math.isclose(x, floor.strength, rel_tol=1e-9, abs_tol=1e-12) for x in listed):
                raise ValueError(f"search.robustness_floor: evaluate.robustness.{floor.attack} must include {floor.strength} "
                                 f"(the floor is checked on that measurement); add it")
        if self.prune.layer_sparsity and self.prune.scope == "global":
            raise ValueError("prune.layer_sparsity sets each layer's amount, but prune.scope global ranks across layers "
                             "and decides them itself; use prune.scope layer (or drop layer_sparsity)")
        if self.prune.layer_sparsity and not getattr(pruner, "per_layer_amounts", False):
            able = [n for n in R.PRUNERS.names() if getattr(R.PRUNERS.get(n), "per_layer_amounts", False)]
            raise ValueError(f"prune.layer_sparsity is not supported by prune.method {self.prune.method!r}; use one of: "
                             f"{', '.join(able)} (or drop layer_sparsity)")
        if self.prune.schedule.kind not in pruner.schedules:
            raise ValueError(
                f"prune.schedule.kind {self.prune.schedule.kind!r} is not supported by prune.method "
                f"{self.prune.method!r}; use one of: {', '.join(pruner.schedules)}"
            )
        if getattr(schedule, "regrows", False) and self.finetune.method != "full":
            raise ValueError(f"prune.schedule.kind {self.prune.schedule.kind} grows pruned weights back from zero, which "
                             f"finetune.method {self.finetune.method!r} (frozen base weights) cannot train; use full")
        return self

    def section_dict(self, *names: str) -> dict[str, Any]:
        d = self.model_dump(mode="json")
        return {n: d[n] for n in names}
