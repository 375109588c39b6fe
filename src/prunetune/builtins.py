"""Every module that registers a piece (task, data source, model, importance, pruner, schedule,
fine-tuning method, optimizer, learning-rate schedule, layer type, tracker).

Imported once, by `registry.load_builtins` on the first registry lookup: adding a piece is one file
plus its line here.
"""

from . import export, tracking, training  # noqa: F401
from .finetune import adapter, bitfit, full, ia3, lora, prompt_tuning  # noqa: F401
from .tasks import causal_lm, classification, regression  # noqa: F401
from .data import cifar10, fashion_mnist, idx, image_folder, text  # noqa: F401
from .data import lm_text, ratings, sequences  # noqa: F401
from .models import builtin, external, resnet_cifar  # noqa: F401
from .models import sequence as sequence_models  # noqa: F401
from .pruning import importance, layers, pruners, schedules, sequence  # noqa: F401
from .pruning import hf_conv1d  # noqa: F401  (transformers' Conv1D, GPT-2)
from .pruning import sparsegpt  # noqa: F401  (SparseGPT importance: masks with weight reconstruction)
