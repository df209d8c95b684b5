"""Helpers the tests share (imported as ``from helpers import ...``; fixtures are in conftest)."""

import os
import subprocess
import sys
from pathlib import Path

from hpcsnp.config import Config

FAST = Config(max_epochs=3, batch_size=16, patience=2, dropout=0.5, learning_rate=3e-3, n_models=1)  # a short training
SMALL_REAL = Path(__file__).resolve().parent / "data" / "height_qa_small.tsv.gz"  # shipped: see data/README.md


def run_cli(*args, check=True, env=None, cwd=None):
    """Run the installed CLI as a user would: a subprocess, stdout and stderr apart."""
    proc = subprocess.run([sys.executable, "-m", "hpcsnp", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"hpcsnp {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def write_tsv(path: Path, text: str, gz=False):
    import gzip

    data = text.encode()
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def fake_container_runtime(path: Path, record: Path) -> Path:
    """A stand-in for apptainer: records its arguments in ``record`` (a line a call), checks
    they are `exec [--bind DIRS] IMAGE CMD...` and runs CMD."""
    path.write_text(f'#!/bin/sh\necho "$@" >> {record}\n'
                    '[ "$1" = exec ] || exit 9\nshift; [ "$1" = --bind ] && shift 2\nshift\nexec "$@"\n')
    path.chmod(0o755)
    return path
