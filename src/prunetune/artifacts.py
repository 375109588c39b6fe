"""Saved models are data, never pickles: `model.safetensors` + `manifest.json` (+ `masks.safetensors`).

Loading rebuilds the architecture from the manifest's model spec, resizes every layer whose
shape structural pruning changed, checks every tensor's shape against the manifest, and returns
the realised model (pruned weights plain zeros, no parametrization: what the report measured);
`keep_masks=True` re-attaches the masks so later fine-tuning keeps the sparsity.
Mostly-zero tensors are stored as a bitmask plus their non-zero values (see `sparse_store`).

Example:
    >>> # save_model(model, "runs/x/model", manifest_extra)      # doctest: +SKIP
    >>> # model, manifest = load_model("runs/x/model")           # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils import parametrize

from . import __version__
from .errors import PrunetuneError
from .files import save_tensors, staged_folder
from .finetune.structure import restore_structure
from .models.hf import load_lm_config
from .pruning.depth import depth_record, restore_depth
from .models.hf_native import HOW, PRUNETUNE, TRANSFORMERS, native_config
from .pruning.decoder import head_counts as decoder_heads, mlp_widths, sync_decoder
from .models import build_model, hf
from .pruning.layers import sync_attributes
from .pruning.masks import attach_mask, baked_state, masked_tensors, realise
from .recipe import ModelSpec, validation_error
from .sparse_store import pack, unpack

FORMAT = "prunetune-model/1"


class Manifest(BaseModel):
    """Schema of manifest.json, validated before anything in it is used."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    format: str
    prunetune_version: str
    torch_version: str
    task: str
    model: dict[str, Any]
    num_classes: int = Field(ge=0)  # 0: no labels (language model)
    class_names: list[str]
    input_shape: list[Annotated[int, Field(gt=0)]] = Field(min_length=1)
    preprocess: dict[str, Any]
    tensors: dict[str, list[Annotated[int, Field(ge=0)]]]
    masks: dict[str, float] = {}
    recipe: dict[str, Any] = {}
    # Modules a fine-tuning method added that loading must rebuild (adapters, a prompt).
    modules: dict[str, Any] = {}
    # Sizes the data decided for the model factory (DataBundle.model_kwargs).
    model_kwargs: dict[str, Any] = {}
    # Depth pruning: block container -> {"kept": original indices, "of": original count} (pruning/depth.py).
    depth: dict[str, Any] = {}
    # Tensors stored as bitmask + values in model.safetensors (sparse_store); {}: all stored dense.
    sparse: dict[str, Any] = {}
    # transformers models: how the folder loads ({"with": "transformers" | "prunetune", "how": sentence, "reason"}).
    loading: dict[str, Any] = {}


def save_model(model: nn.Module, folder: str | Path, info: dict[str, Any]) -> Path:
    """Write weights (masks realised), masks and manifest into `folder` (which must not exist)."""
    folder = Path(folder)
    if folder.exists():
        raise PrunetuneError(f"{folder}: already exists; choose another output folder")
    with staged_folder(folder) as tmp:
        # Memory: a plain model is read as it is; a masked one on the CPU has its masks baked into its own
        # weights (same outputs; a realised copy had a 336 M-parameter decoder at 2.9x its fp32 size while
        # saving); anything else is realised into one copy. A tensor that is its whole storage is written
        # without another copy (with a copy of everything on top, that decoder peaked at 4x).
        masked = any(parametrize.is_parametrized(m) for m in model.modules())
        on_cpu = all(t.device.type == "cpu" for t in model.state_dict().values())
        baked = baked_state(model) if on_cpu and masked else None
        plain = model if on_cpu and (not masked or baked is not None) else realise(model).cpu()  # .cpu(): in place
        state = {k: v.detach() if _whole_storage(v) else v.detach().contiguous().clone()
                 for k, v in (unique_tensors(baked) if baked is not None else unique_state(plain)).items()}
        # A transformers model's weights stay dense: plain from_pretrained reads them (it would silently
        # re-initialise tensors stored as bitmask + values); the report still gives the sparse size.
        hf_folder = hasattr(getattr(plain, "config", None), "save_pretrained")
        stored, sparse = (state, {}) if hf_folder else pack(state)
        save_tensors(stored, tmp / "model.safetensors")
        # Keyed `<layer>.<tensor>`: `fc.weight`, and every masked gate tensor of an RNN (`lstm.weight_hh_l0`).
        masks = {key: m.detach().cpu().contiguous() for key, m in masked_tensors(model).items()}
        if masks:
            save_tensors(masks, tmp / "masks.safetensors")
        info = _save_hf_files(plain, tmp, info)
        manifest = {
            "format": FORMAT,
            "prunetune_version": __version__,
            "torch_version": torch.__version__,
            **info,
            "tensors": {k: list(v.shape) for k, v in state.items()},
            "masks": {k: round(float(v.float().mean()), 6) for k, v in masks.items()},
            **({"depth": depth} if (depth := depth_record(plain)) else {}),
            **({"sparse": sparse} if sparse else {}),
        }
        Manifest.model_validate(manifest)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def loading_entry(folder: str | Path) -> dict[str, Any]:
    """A report's `saved_model` entry for the model folder `save_model` wrote: how it loads (transformers
    models: {"with": "transformers" | "prunetune", "how": sentence, "reason"}); {} for other models."""
    loading = read_manifest(folder).loading
    return {"saved_model": loading} if loading else {}


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)


def unique_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with each shared tensor once (tied embeddings, peft's alias of the word embeddings):
    safetensors refuses to store one tensor under two names. `with_aliases` puts the names back."""
    seen: set[tuple] = set()
    out = {}
    for k, v in state.items():
        key = _storage_key(v)
        if key not in seen:
            seen.add(key)
            out[k] = v
    return out


def _whole_storage(t: torch.Tensor) -> bool:
    """True when `t` is contiguous and spans its whole storage (safetensors writes it as it is)."""
    return t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size()


def unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with each shared tensor once (see `unique_tensors`)."""
    return unique_tensors(model.state_dict())


def with_aliases(saved: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A full state dict of `model` from `saved` (a `unique_tensors` of one): each alias gets its tensor."""
    first: dict[tuple, str] = {}
    full = model.state_dict()
    for k, v in full.items():
        first.setdefault(_storage_key(v), k)
    return {k: saved[k] if k in saved else saved[first[_storage_key(v)]] for k, v in full.items()}


def load_state(model: nn.Module, state: dict[str, torch.Tensor], folder: Path) -> None:
    """Load weights; a key may be absent only when it is an alias of a loaded tensor."""
    fresh = model.state_dict()
    first: dict[tuple, str] = {}
    for k, v in fresh.items():
        first.setdefault(_storage_key(v), k)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise PrunetuneError(f"{folder}: weights do not fit the architecture ({str(e).splitlines()[0]}); re-save the model") from None
    orphans = [k for k in result.missing_keys if first.get(_storage_key(fresh[k])) not in state]
    if orphans or result.unexpected_keys:
        what = f"missing {orphans[:3]}" if orphans else f"unexpected {result.unexpected_keys[:3]}"
        raise PrunetuneError(f"{folder}: weights do not fit the architecture ({what}); re-save the model")


def _save_hf_files(model: nn.Module, folder: Path, info: dict[str, Any]) -> dict[str, Any]:
    """A transformers model also gets `config.json` (labels named), so the folder is laid out like
    `save_pretrained`'s; the manifest records the per-layer widths. When every layer keeps the same
    counts and the architecture's config can say so (`native_config`), config.json carries the pruned
    counts and the folder loads with plain `from_pretrained`; otherwise it is the original config,
    which prunetune resizes from the manifest. Every text model gets its tokenizer files (the manifest
    then says '.', the only value `resolve_tokenizer` takes)."""
    pre = dict(info.get("preprocess") or {})
    if pre.get("kind") == "text" and pre.get("tokenizer") not in (None, "."):
        hf.load_tokenizer(pre["tokenizer"]).save_pretrained(folder)  # transformers' fixed file names, inside `folder`
        info = {**info, "preprocess": {**pre, "tokenizer": "."}}  # relative to the model folder
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "save_pretrained"):
        return info
    names = info.get("class_names") or []
    if names:  # a language model has no labels
        config.id2label = {i: n for i, n in enumerate(names)}
        config.label2id = {n: i for i, n in enumerate(names)}
    if info.get("modules"):
        native, why = None, f"fine-tuning modules transformers does not build: {', '.join(info['modules'])}"
    else:
        native, why = native_config(model)
    if native is not None:
        native.architectures = [type(model).__name__]
        native.save_pretrained(folder)
    else:
        config.save_pretrained(folder)
    way = TRANSFORMERS if native is not None else PRUNETUNE
    loading = {"with": way, "how": HOW[way] + (f" ({why})" if why else ""), "reason": why}
    widths = {"heads": hf.head_counts(model), "linear_out": {
        n: m.out_features for n, m in model.named_modules() if isinstance(m, nn.Linear) and "intermediate" in n}}
    if decoder_heads(model):
        widths["decoder"] = {"heads": decoder_heads(model), "mlp": mlp_widths(model)}
    return {**info, "widths": widths, "loading": loading}


def resolve_tokenizer(folder: Path, preprocess: dict[str, Any]) -> str:
    """Where a saved model's tokenizer lives: '.' (what `save_model` writes) is the model folder itself.

    A manifest is data from whoever sent the folder: any other value must be a relative path to a
    folder inside the model folder; an absolute path, '..', a link out of the folder or a hub id (a
    download) is refused."""
    src = preprocess.get("tokenizer") or "."
    where = f"{Path(folder) / 'manifest.json'}: preprocess.tokenizer"
    if not isinstance(src, str) or "\0" in src:
        raise PrunetuneError(f"{where}: {str(src)[:60]!r} is not a folder name; re-save the model")
    if src == ".":
        return str(folder)
    rel = Path(src)
    inside = not rel.is_absolute() and ".." not in rel.parts and "\\" not in src
    target = Path(folder) / rel
    if inside:
        try:
            inside = target.resolve().is_relative_to(Path(folder).resolve())  # a link out of the folder is outside
        except (OSError, RuntimeError):
            inside = False
    if not inside:
        raise PrunetuneError(f"{where}: {src[:80]!r} is outside the model folder; a saved model keeps its tokenizer "
                             "in its own folder ('.'): re-save the model")
    if not target.is_dir():
        raise PrunetuneError(f"{where}: {src[:80]!r} is not a folder inside the model folder; re-save the model")
    return str(target)


def read_manifest(folder: str | Path) -> Manifest:
    folder = Path(folder)
    path = folder / "manifest.json"
    if not folder.is_dir():
        raise PrunetuneError(f"{folder}: model folder not found; give a run's model/ folder")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PrunetuneError(f"{path}: missing; a model folder needs manifest.json and model.safetensors") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PrunetuneError(f"{path}: unreadable manifest ({e.__class__.__name__}); re-save the model") from None
    try:
        m = Manifest.model_validate(raw)
    except ValidationError as e:
        raise validation_error(e, str(path), hint="; re-save the model") from None
    if m.format != FORMAT:
        raise PrunetuneError(f"{path}: format {m.format!r} is not {FORMAT!r}; re-save with this prunetune version")
    return m


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise PrunetuneError(f"{path}: missing; the model folder is incomplete, re-save the model")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise PrunetuneError(f"{path}: not a valid safetensors file ({str(e)[:80]}); re-save the model") from None


def resize_to(model: nn.Module, shapes: dict[str, list[int]]) -> None:
    """Give every parameter / buffer the shape recorded in `shapes` (structural pruning changed them)."""
    for mod_name, mod in model.named_modules():
        changed = False
        for kind, tensors in (("param", mod._parameters), ("buffer", mod._buffers)):
            for t_name, t in list(tensors.items()):
                if t is None:
                    continue
                key = f"{mod_name}.{t_name}" if mod_name else t_name
                want = shapes.get(key)
                if want is not None and list(t.shape) != list(want):
                    new = torch.empty(want, dtype=t.dtype, device=t.device)
                    if kind == "param":
                        mod._parameters[t_name] = nn.Parameter(new, requires_grad=t.requires_grad)
                    else:
                        mod._buffers[t_name] = new
                    changed = True
        if changed:
            sync_attributes(mod)
    for attn in hf.attention_modules(model).values():
        hf.sync_attention(attn)
    sync_decoder(model)  # decoder LMs: head counts per layer follow the tensors


_PUT_BACK = "put back the config.json saved with these weights, or re-save the model"


def _config_fits(model: nn.Module, want: dict[str, list[int]], folder: Path) -> None:
    """A folder that loads with transformers: its config.json must build exactly the saved shapes."""
    have = model.state_dict()
    for k, shape in want.items():
        if k in have and list(have[k].shape) != list(shape):
            raise PrunetuneError(f"{folder / 'config.json'}: disagrees with model.safetensors ({k} is {list(shape)} "
                                 f"there, the config builds {list(have[k].shape)}); {_PUT_BACK}")


def _heads_fit(model: nn.Module, manifest: Manifest, folder: Path) -> None:
    """The head counts the config's head width gives must be the saved ones (a config with another head
    width would split the same tensors into other heads)."""
    widths = (manifest.model_extra or {}).get("widths") or {}
    for saved, now in ((widths.get("heads"), hf.head_counts(model)),
                       ((widths.get("decoder") or {}).get("heads"), decoder_heads(model))):
        if saved and saved != now:
            name = next((n for n in saved if saved.get(n) != now.get(n)), next(iter(saved)))
            raise PrunetuneError(f"{folder / 'config.json'}: disagrees with model.safetensors ({name} has "
                                 f"{saved[name]} heads there, {now.get(name)} by the config); {_PUT_BACK}")


def load_model(folder: str | Path, trust_code: bool = False, keep_masks: bool = False) -> tuple[nn.Module, Manifest]:
    """Rebuild a saved model from its folder: no pickle is ever loaded.

    Returns the realised model (pruned weights are plain zeros, as measured and shipped);
    `keep_masks=True` re-attaches the saved masks as parametrizations, for anything that trains
    the model further (refine, resume) and must keep the pruned weights at zero."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    state = unpack(_load_tensors(folder / "model.safetensors"), manifest.sparse, str(folder / "model.safetensors"))
    want = manifest.tensors
    if set(state) != set(want):
        diff = sorted(set(state) ^ set(want))[:3]
        raise PrunetuneError(f"{folder}: manifest and model.safetensors list different tensors ({', '.join(diff)}); re-save the model")
    for k, v in state.items():
        if list(v.shape) != list(want[k]):
            raise PrunetuneError(
                f"{folder}: tensor {k} has shape {list(v.shape)} but the manifest says {want[k]}; the files do not belong together"
            )
    spec = ModelSpec.model_validate(manifest.model)
    if ":" in spec.name and not spec.name.startswith(("torchvision:", "timm:")):
        spec = spec.model_copy(update={"trust_code": trust_code})
    if hf.is_hf(spec.name):
        if not (folder / "config.json").is_file():
            raise PrunetuneError(f"{folder / 'config.json'}: missing; a saved transformers model needs its config, "
                                 "re-save the model")
        # Built from the saved config (no weights fetched), then resized to the saved widths.
        head = manifest.model_kwargs.get("head")
        if head == "causal_lm":  # a language model (models/hf.py causal_lm)
            config = load_lm_config(str(folder), spec.trust_code)
        else:
            config = hf.load_config(str(folder), manifest.num_classes, spec.trust_code)
        try:
            model = hf.hf_model(spec.name, manifest.num_classes, trust_code=spec.trust_code, pretrained=False,
                                config=config, **({"head": head} if head else {}))
        except (ValueError, TypeError, RuntimeError) as e:
            raise PrunetuneError(f"{folder / 'config.json'}: transformers cannot build the model from it "
                                 f"({str(e).splitlines()[0][:100]}); {_PUT_BACK}") from None
        if manifest.loading.get("with") == TRANSFORMERS:  # config.json alone must build these shapes
            _config_fits(model, want, folder)
    else:
        model = build_model(spec, manifest.num_classes, tuple(manifest.input_shape), manifest.model_kwargs)
    if manifest.depth:  # before any fine-tuning structure wraps the model
        restore_depth(model, manifest.depth, str(folder / "manifest.json"))
    if manifest.modules:
        model = restore_structure(model, manifest.modules, str(folder / "manifest.json"))
    resize_to(model, want)
    load_state(model, state, folder)
    if hf.is_hf(spec.name):
        _heads_fit(model, manifest, folder)
    mask_file = folder / "masks.safetensors"
    if manifest.masks and keep_masks:
        masks = _load_tensors(mask_file)
        mods = dict(model.named_modules())
        for key, mask in masks.items():
            layer, _, tensor = key.rpartition(".")
            target = getattr(mods[layer], tensor, None) if layer in mods else None
            if not isinstance(target, torch.Tensor) or list(target.shape) != list(mask.shape):
                raise PrunetuneError(f"{mask_file}: mask {key} does not fit the model; re-save the model")
            attach_mask(mods[layer], tensor).mask.copy_(mask.bool())
    model.eval()
    return model, manifest
