"""The job scripts and container recipes, checked without a scheduler or an image build."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import fake_container_runtime

ROOT = Path(__file__).resolve().parents[1]


def test_array_script_runs_through_a_container_runtime(sim_store, tmp_path):
    """HPCSNP_IMAGE set: each command goes through `RUNTIME exec --bind ... IMAGE hpcsnp ...`
    (here a stand-in runtime that records its arguments, then runs the command)."""
    store, _ = sim_store
    record = tmp_path / "calls.txt"
    fake = fake_container_runtime(tmp_path / "fake-apptainer", record)
    run = tmp_path / "run"
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_JOB_ID": "77",
           "HPCSNP_IMAGE": "/images/hpcsnp.sif", "HPCSNP_CONTAINER": str(fake), "HPCSNP_BIND": "/scratch",
           "HPCSNP_TRAIN_ARGS": "--epochs 1 --batch-size 32", "HPCSNP_BASELINE": "0"}
    proc = subprocess.run(["bash", str(ROOT / "slurm" / "cv_array.sh"), str(run), str(store)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, (run / "logs" / "77_2.log").read_text()
    calls = record.read_text().split()
    binds = calls[calls.index("--bind") + 1].split(",")
    assert str(run.resolve()) in binds and str(store.parent.resolve()) in binds and "/scratch" in binds
    assert calls[calls.index("--bind") + 2:calls.index("--bind") + 5] == ["/images/hpcsnp.sif", "hpcsnp", "train"]
    assert (run / "sim" / "fold_2" / "metrics.json").exists()
    assert "task 2 done" in (run / "logs" / "77_2.log").read_text()


def test_array_script_refuses_to_run_outside_an_array(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", str(ROOT / "slurm" / "cv_array.sh"), str(tmp_path), "x.zarr"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "array task" in proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shell_scripts_pass_shellcheck():
    scripts = sorted(str(p) for p in (ROOT / "slurm").glob("*.sh")) + sorted(str(p) for p in (ROOT / "tools").glob("*.sh"))  # noqa: E501
    proc = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_dockerfile_lints_clean_and_has_the_agreed_shape():
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE=python:3.11-slim" in text and 'ENTRYPOINT ["hpcsnp"]' in text
    assert text.count("FROM ") == 2  # multi-stage: nothing of the build stage but the venv
    assert "\nUSER 1000" in text
    hadolint = shutil.which("hadolint")
    if hadolint:
        proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


def test_singularity_def_parses_and_tests_the_pipeline():
    spython = pytest.importorskip("spython.main.parse.parsers")
    recipe = list(spython.SingularityParser(str(ROOT / "Singularity.def")).recipe.values())[0]
    assert recipe.fromHeader.startswith("python:3.11")
    for entry in recipe.files:
        assert (ROOT / entry.split()[0]).exists(), entry
    assert "hpcsnp" in (recipe.entrypoint or recipe.cmd or "")  # %runscript
    text = (ROOT / "Singularity.def").read_text()
    test_section = text.split("%test", 1)[1].split("\n%", 1)[0]
    for verb in ("simulate", "ingest", "train"):
        assert f"hpcsnp {verb}" in test_section
