import subprocess
import sys


def test_import_prunetune_stays_light():
    code = "import sys, prunetune, prunetune.registry, prunetune.errors; print(sorted(m for m in ('torch', 'torch_pruning', 'optuna', 'onnx', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
