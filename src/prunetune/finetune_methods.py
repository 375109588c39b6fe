"""Fine-tuning methods, one registry: full, bitfit, lora, ia3, prompt_tuning (through `peft`), adapter.

A method wraps the model for training (`prepare`), says which parameters train (`trainable`), and
gives back the plain model to measure and save (`finish`). LoRA and IA3 are merged into the weights
at `finish`; the pruning is kept through the merge:

- unstructured / N:M masks: LoRA's update is trained *through the mask* (the layer computes
  base(x) + x @ ((s * B @ A) * mask).T), so the merged weight (W + s * B @ A) * mask gives the same
  logits as the adapter did; after PEFT's merge the masks are re-applied and re-attached. IA3
  scales rows or columns, which keeps zeros zero by construction; the masks are re-applied anyway.
- structured pruning: the merged weights keep the pruned widths; `finish` checks the shapes.

`finish` reports non-zero counts before and after the merge and the largest logit difference on
a probe batch. Bottleneck adapters (Houlsby et al. 2019) are our own small module: `peft` has none,
and the `adapters` library pins transformers 4.57 (we use 5.x); an adapter is not mergeable, so it
stays in the saved model (the manifest records where, and loading re-inserts it).

Example:
    >>> from prunetune.registry import FINETUNE_METHODS
    >>> FINETUNE_METHODS.names()
    ['adapter', 'bitfit', 'full', 'ia3', 'lora', 'prompt_tuning']
"""

from __future__ import annotations

import re
import types
import warnings
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .errors import PrunetuneError
from .pruning.hf_conv1d import in_out, is_hf_conv1d
from .pruning.masks import attach_mask, get_mask, masked_layers, realise
from .registry import FINETUNE_METHODS


class Method:
    """Full fine-tuning; the base every method extends."""

    mergeable = False
    default_include: tuple[str, ...] = ("*",)

    def __init__(self, spec, classifier: str | None = None) -> None:
        self.spec = spec
        self.peft = getattr(spec, "peft", None)
        self.classifier = classifier
        self.summary: dict[str, Any] = {"method": type(self).name}

    name = "full"

    def prepare(self, model: nn.Module) -> nn.Module:
        return model

    def trainable(self, model: nn.Module) -> list[nn.Parameter]:
        for p in model.parameters():
            p.requires_grad_(True)
        return list(model.parameters())

    def finish(self, model: nn.Module) -> nn.Module:
        return model

    def structure(self) -> dict[str, Any]:
        """What a saved model needs rebuilt besides its base architecture (see `restore_structure`)."""
        return {}

    def targets(self, model: nn.Module) -> list[str]:
        """Linear layers chosen by finetune.peft.include / exclude (the classifier is trained fully)."""
        include = list(self.peft.include) if self.peft and self.peft.include else list(self.default_include)
        exclude = list(self.peft.exclude) if self.peft else []
        names = [n for n, m in model.named_modules() if (isinstance(m, nn.Linear) or is_hf_conv1d(m)) and n]
        for field, pats in (("finetune.peft.include", include), ("finetune.peft.exclude", exclude)):
            for p in pats:
                if not any(fnmatchcase(n, p) for n in names):
                    raise PrunetuneError(f"{field}: pattern {p!r} matches no linear layer; available: {', '.join(names[:8])}, ...")
        chosen = [n for n in names if any(fnmatchcase(n, p) for p in include)
                  and not any(fnmatchcase(n, p) for p in exclude)
                  and n != self.classifier and not n.endswith("pooler.dense")]
        if not chosen:
            raise PrunetuneError("finetune.peft.include/exclude: the patterns select no layer to adapt; widen include")
        return chosen


FINETUNE_METHODS.register("full")(Method)


def _head_params(model: nn.Module, classifier: str | None) -> list[nn.Parameter]:
    if not classifier:
        return []
    from .models.hf import is_lm_head

    if is_lm_head(model, classifier):  # a language model's head (tied to the embeddings) is not a classifier
        return []
    mod = dict(model.named_modules()).get(classifier)
    return list(mod.parameters()) if mod is not None else []


@FINETUNE_METHODS.register("bitfit")
class BitFit(Method):
    """Biases and the classifier head only (Ben Zaken et al. 2022)."""

    name = "bitfit"

    def trainable(self, model):
        head = {id(p) for p in _head_params(model, self.classifier)}
        for n, p in model.named_parameters():
            p.requires_grad_(n.endswith("bias") or id(p) in head)
        return [p for p in model.parameters() if p.requires_grad]


class _Peft(Method):
    """Methods built on `peft`: the model is wrapped by get_peft_model; the classifier is trained fully."""

    def _config(self, model: nn.Module, targets: list[str]):
        raise NotImplementedError

    def prepare(self, model):
        try:
            import peft  # noqa: F401
        except ImportError:
            raise PrunetuneError(f"finetune.method: {self.name} needs peft; pip install 'prunetune[text]'") from None
        from peft import get_peft_model

        self.base = model
        self.probe = None
        targets = self.targets(model) if self.name != "prompt_tuning" else []
        self.summary["targets"] = len(targets)
        cfg = self._config(model, targets)
        if self.classifier:
            from .models.hf import is_lm_head

            if not is_lm_head(model, self.classifier):  # a language model's head stays frozen
                cfg.modules_to_save = [self.classifier]
        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
        try:
            wrapped = get_peft_model(model, cfg)
        except (ValueError, TypeError, AttributeError, NotImplementedError) as e:
            raise PrunetuneError(f"finetune.method: {self.name} is not supported for {type(model).__name__} "
                                 f"({str(e).splitlines()[0][:100]}); choose lora, ia3, bitfit or full") from None
        return wrapped

    def trainable(self, model):
        return [p for p in model.parameters() if p.requires_grad]


def _masked_lora_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """A LoRA layer whose base weight is masked: the low-rank update is masked too."""
    result = self.base_layer(x, *args, **kwargs)
    mask = get_mask(self.base_layer).mask
    for name in self.active_adapters:
        if name not in self.lora_A.keys() or self.disable_adapters or self.merged:
            continue
        delta = (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]
        m = mask.t() if getattr(self, "fan_in_fan_out", False) else mask  # Conv1D (GPT-2) stores [in, out]
        result = result + F.linear(self.lora_dropout[name](x), delta * m)
    return result


class _Mergeable(_Peft):
    mergeable = True

    def probe_with(self, inputs: Any) -> None:
        """Inputs on which logits before and after the merge are compared."""
        self.probe = inputs

    @torch.no_grad()
    def _logits(self, model: nn.Module) -> torch.Tensor | None:
        if self.probe is None:
            return None
        was = model.training
        model.eval()
        out = model(**self.probe) if isinstance(self.probe, dict) else model(self.probe)
        model.train(was)
        return getattr(out, "logits", out).float()

    def finish(self, wrapped):
        before_logits = self._logits(wrapped)
        masks = {n.removeprefix("base_model.model."): m.clone() for n, m in masked_layers(wrapped).items()}
        before_nz = _nonzeros(realise(wrapped.get_base_model()), skip=("lora_", "ia3_l", "original_module"))
        # Bake the masks into the weights, let peft merge, then mask again and re-attach.
        base = wrapped.get_base_model()
        for mod in base.modules():
            if get_mask(mod) is not None:
                realise(mod, inplace=True)
        merged = wrapped.merge_and_unload()
        mods = dict(merged.named_modules())
        with torch.no_grad():
            for name, mask in masks.items():
                name = name.removesuffix(".base_layer")
                mod = mods[name]
                mod.weight.mul_(mask)
                attach_mask(mod).mask.copy_(mask)
        plain = realise(merged)
        after_nz = _nonzeros(plain)
        after_logits = self._logits(merged)
        pmods = dict(plain.named_modules())
        leaked = sum(int(torch.count_nonzero(pmods[n.removesuffix(".base_layer")].weight[~m])) for n, m in masks.items())
        self.summary["merge"] = {
            "nonzero_before": before_nz, "nonzero_after": after_nz, "nonzero_gained": after_nz - before_nz,
            "masked_layers": len(masks), "pruned_weights_nonzero_after": leaked,
            "max_logit_diff": None if before_logits is None else float((before_logits - after_logits).abs().max()),
        }
        return merged


def _nonzeros(model: nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Non-zero weights; `skip` leaves out adapter tensors (and peft's frozen copy of the head)."""
    return sum(int(torch.count_nonzero(p)) for n, p in model.named_parameters() if not any(k in n for k in skip))


@FINETUNE_METHODS.register("lora")
class LoRA(_Mergeable):
    """Low-rank adapters (peft), merged into the weights at the end; masks kept through the merge."""

    name = "lora"

    def _config(self, model, targets):
        from peft import LoraConfig

        p = self.peft
        mods = dict(model.named_modules())
        conv = bool(targets) and all(is_hf_conv1d(mods[t]) for t in targets)  # GPT-2's Conv1D: weights [in, out]
        return LoraConfig(r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout, target_modules=targets, bias="none",
                          fan_in_fan_out=conv)

    def prepare(self, model):
        wrapped = super().prepare(model)
        from peft.tuners.lora import Linear as LoraLinear

        for mod in wrapped.modules():
            if isinstance(mod, LoraLinear) and get_mask(mod.base_layer) is not None:
                mod.forward = types.MethodType(_masked_lora_forward, mod)
        return wrapped


@FINETUNE_METHODS.register("ia3")
class IA3(_Mergeable):
    """Learned rescaling vectors (peft IA3); down-projections scale their inputs, others their outputs."""

    name = "ia3"

    def _config(self, model, targets):
        from peft import IA3Config

        mods = dict(model.named_modules())
        ff = [n for n in targets if in_out(mods[n])[0] > in_out(mods[n])[1]]
        return IA3Config(target_modules=targets, feedforward_modules=ff)


@FINETUNE_METHODS.register("prompt_tuning")
class PromptTuning(_Peft):
    """Trainable virtual tokens prepended to every input (peft); the encoder stays frozen."""

    name = "prompt_tuning"

    def _config(self, model, targets):
        from peft import PromptTuningConfig, TaskType

        if getattr(model, "config", None) is None or not hasattr(model, "get_input_embeddings"):
            raise PrunetuneError("finetune.method: prompt_tuning needs a transformers model with token embeddings; "
                                 "choose lora, ia3, bitfit or full")
        return PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=self.peft.virtual_tokens)

    def prepare(self, model):
        wrapped = super().prepare(model)
        self.summary["virtual_tokens"] = self.peft.virtual_tokens
        return wrapped

    def finish(self, wrapped):
        # Not mergeable: the saved model keeps the prompt; loading re-wraps (`restore_structure`).
        return wrapped

    def structure(self):
        return {"prompt_tuning": {"virtual_tokens": self.peft.virtual_tokens, "classifier": self.classifier}}


class Adapter(nn.Module):
    """Bottleneck adapter after a projection: h + up(gelu(down(h))), `up` initialised to zero."""

    def __init__(self, base: nn.Linear, size: int) -> None:
        super().__init__()
        self.base = base
        self.down = nn.Linear(base.out_features, size)
        self.up = nn.Linear(size, base.out_features)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    @property
    def weight(self) -> torch.Tensor:  # the wrapped layer's, so per-layer reports see through the adapter
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        return h + self.up(F.gelu(self.down(h)))


def insert_adapters(model: nn.Module, names: list[str], size: int) -> None:
    mods = dict(model.named_modules())
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = mods[parent_name] if parent_name else model
        base = getattr(parent, child)
        setattr(parent, child, Adapter(base, size).to(base.weight.device))


@FINETUNE_METHODS.register("adapter")
class Bottleneck(Method):
    """Bottleneck adapters after the attention and FFN output projections (our module; see docs)."""

    name = "adapter"
    default_include = ("*output.dense",)

    def prepare(self, model):
        names = self.targets(model)
        insert_adapters(model, names, self.peft.adapter_size)
        self.summary.update({"targets": len(names), "adapters": {"names": names, "size": self.peft.adapter_size}})
        return model

    def trainable(self, model):
        head = {id(p) for p in _head_params(model, self.classifier)}
        for n, p in model.named_parameters():
            p.requires_grad_(".down." in n or ".up." in n or id(p) in head)
        return [p for p in model.parameters() if p.requires_grad]

    def structure(self):
        return {"adapters": self.summary["adapters"]}


_MODULE_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")


def _checked_modules(model: nn.Module, modules: Any, where: str) -> dict[str, Any]:
    """A manifest's `modules`, checked before anything in it is used: adapter names must be distinct
    linear layers of the model (they are set with setattr), sizes and token counts small positive ints."""

    def bad(field: str, why: str) -> PrunetuneError:
        return PrunetuneError(f"{where}: modules.{field}: {why}; re-save the model")

    def count(value: Any, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 16:
            raise bad(field, f"{value!r} is not a whole number from 1 to {1 << 16}")
        return value

    if not isinstance(modules, dict):
        raise bad("", "not a mapping")
    unknown = sorted(set(modules) - {"adapters", "prompt_tuning"})
    if unknown:
        raise bad(unknown[0], "unknown kind of module (known: adapters, prompt_tuning)")
    layers = dict(model.named_modules())
    out: dict[str, Any] = {}
    if "adapters" in modules:
        cfg = modules["adapters"]
        names = cfg.get("names") if isinstance(cfg, dict) else None
        if not isinstance(names, list) or not names:
            raise bad("adapters.names", "missing or not a list of layer names")
        for name in names:
            if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
                raise bad("adapters.names", f"{str(name)[:60]!r} is not a layer name (letters, digits, '_' and '.')")
            if not isinstance(layers.get(name), nn.Linear):
                raise bad("adapters.names", f"{name!r} is not a linear layer of the model")
        if len(set(names)) != len(names):
            raise bad("adapters.names", "a layer is named twice")
        out["adapters"] = {"names": names, "size": count(cfg.get("size"), "adapters.size")}
    if "prompt_tuning" in modules:
        cfg = modules["prompt_tuning"]
        if not isinstance(cfg, dict):
            raise bad("prompt_tuning", "not a mapping")
        classifier = cfg.get("classifier")
        if classifier is not None and (not isinstance(classifier, str) or classifier not in layers or not classifier):
            raise bad("prompt_tuning.classifier", f"{str(classifier)[:60]!r} is not a layer of the model")
        out["prompt_tuning"] = {"virtual_tokens": count(cfg.get("virtual_tokens"), "prompt_tuning.virtual_tokens"),
                                "classifier": classifier}
    return out


def restore_structure(model: nn.Module, modules: dict[str, Any], where: str = "manifest.json") -> nn.Module:
    """Re-insert what a fine-tuning method added (adapters, a prompt) before saved weights are loaded."""
    modules = _checked_modules(model, modules, where)
    if "adapters" in modules:
        insert_adapters(model, list(modules["adapters"]["names"]), int(modules["adapters"]["size"]))
    if "prompt_tuning" in modules:
        from types import SimpleNamespace

        cfg = modules["prompt_tuning"]
        spec = SimpleNamespace(peft=SimpleNamespace(virtual_tokens=int(cfg["virtual_tokens"]), include=None, exclude=[]))
        model = PromptTuning(spec, cfg.get("classifier")).prepare(model)
    return model


def trainable_summary(model: nn.Module) -> dict[str, Any]:
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": train, "total_params": total, "trainable_fraction": round(train / max(1, total), 6)}
