"""The GPU flavour (``pip install 'hpcsnp[gpu]'``, or an image built with ``EXTRAS=[gpu]``):
where TensorFlow sees a GPU, a fold's models train on it, the fold records it, and its
predictions agree with the same fold trained on the CPU.  Where no GPU is visible the test
skips and says so: the CPU path is what every other test checks."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest


def visible_gpus() -> int:
    """GPUs TensorFlow sees, asked in a process of its own (this one keeps its CPU settings)."""
    code = "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines = proc.stdout.split()
    return int(lines[-1]) if proc.returncode == 0 and lines and lines[-1].isdigit() else 0


@pytest.fixture(scope="module")
def gpu():
    if not visible_gpus():
        pytest.skip("TensorFlow sees no GPU here (a CPU build of TensorFlow, or no GPU and driver): this check "
                    "runs where one is, after pip install 'hpcsnp[gpu]' (docker run --gpus all, apptainer --nv)")


def train(store, run, env) -> tuple[dict, pd.DataFrame]:
    cmd = [sys.executable, "-m", "hpcsnp", "train", str(store), "--fold", "1", "--run", str(run), "--epochs", "4",
           "--batch-size", "32", "--models-per-fold", "1", "--no-refit", "--threads", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    fold = next(run.glob("*/fold_1"))
    return json.loads((fold / "metrics.json").read_text()), pd.read_csv(fold / "predictions.csv")


def test_a_fold_trains_on_the_gpu_and_agrees_with_the_cpu(gpu, sim_store, tmp_path):
    store = sim_store[0]
    on_gpu, pred_gpu = train(store, tmp_path / "gpu", {})
    on_cpu, pred_cpu = train(store, tmp_path / "cpu", {"CUDA_VISIBLE_DEVICES": "-1"})
    assert on_gpu["device"].startswith("GPU") and on_cpu["device"] == "CPU"
    assert not on_gpu["bf16"]  # "auto" keeps float32 on a GPU
    a, b = (p.sort_values("sample_id")["prediction"].to_numpy() for p in (pred_gpu, pred_cpu))
    # the same data, seed and schedule; only the arithmetic's order differs
    assert np.corrcoef(a, b)[0, 1] > 0.95
    assert abs(on_gpu["pcc"] - on_cpu["pcc"]) < 0.05
