"""Causal language models: the `causal_lm` task, the `lm_text` data source, decoder structured pruning.

Any Hugging Face causal LM (GPT-2, Llama, Qwen, Pythia-style) by hub id or local folder
(`model.name: hf:...`), next-token prediction with the NLL loss, perplexity as the metric.
"""

from . import task  # noqa: F401  (registers causal_lm)
