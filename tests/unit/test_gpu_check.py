"""The prepared GPU check's wheel list (bench/gpu_wheels.py) and its report's checks (bench/gpu_check.py).

No network and no GPU here: the list is computed from this environment's metadata (what
``make gpu-wheels`` downloads; CI runs that target and ``make gpu-check DEVICE=cpu`` after the
tests). A GPU machine adds CUDA bf16 kernels and the peak-memory figure.
"""

from __future__ import annotations

from bench.gpu_check import MIN_CHANGED, Watch
from bench.gpu_wheels import LIMIT_MB, OPTIONAL, wanted


def test_wheels_bring_what_the_gpu_machine_lacks_and_nothing_it_has():
    pins = wanted()
    for needed in ("trl", "datasets", "dill", "xxhash", "multiprocess", "pydantic-settings", "fastapi", "uvicorn",
                   "tantivy", "minio", "transformers"):  # transformers: the machine's 5.17 is older than 5.18
        assert needed in pins, needed
    for present in ("torch", "numpy", "pyarrow", "pandas", "pillow", "httpx", "pytest"):
        assert present not in pins, present  # already there; a second copy would break CUDA or waste MB
    assert not any(name.startswith(("nvidia-", "triton", "cuda-")) for name in pins)
    assert "mlflow" not in pins  # tracking is off in the check; mlflow is imported only where used
    assert OPTIONAL == {"torchvision": "0.26.0"}  # torch 2.11's: installed only when the machine has none
    assert LIMIT_MB == 60


def test_training_steps_import_no_mlflow():
    """The check runs SFT and GRPO with tracking off on a machine without mlflow."""
    import subprocess
    import sys

    code = "import sys, components.sft.train, components.grpo.train; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_changed_fraction_counts_elements_of_trainable_parameters_only():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[1].weight.requires_grad_(False)
    watch = Watch()
    watch.on_train_begin(None, None, None, model=model)
    with torch.no_grad():
        model[0].weight[0, 0] += 1.0
        model[1].weight += 1.0  # frozen: not counted
    state = type("S", (), {"global_step": 1})()
    watch.on_train_end(None, state, None, model=model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert watch.changed == 1 / trainable < MIN_CHANGED
