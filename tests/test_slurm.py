"""On a real SLURM scheduler (slurm/local-cluster.sh): the fold array, the dependent
reduce, requeue and resubmission.  Marked `slurm`; CI starts the cluster first."""

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import fake_container_runtime, run_cli

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "slurm"
TRAIN = ["--epochs", "4", "--batch-size", "16", "--dropout", "0.5", "--patience", "10", "--models-per-fold", "1"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED"}


@pytest.fixture(scope="module")
def cluster():
    if shutil.which("sbatch") is None and os.environ.get("HPCSNP_REQUIRE_SLURM") != "1":
        pytest.skip("no SLURM here; run slurm/local-cluster.sh up (as root) to test against one")
    proc = subprocess.run([str(SLURM / "local-cluster.sh"), "up"], capture_output=True, text=True)
    if proc.returncode != 0:
        if os.environ.get("HPCSNP_REQUIRE_SLURM") == "1":
            pytest.fail(f"local SLURM cluster did not come up:\n{proc.stderr}")
        pytest.skip(f"local SLURM cluster did not come up: {proc.stderr.strip()}")


def states(job):
    proc = subprocess.run(["scontrol", "show", "job", "-o", str(job)], capture_output=True, text=True)
    if "Unable to contact slurm controller" in proc.stderr:
        raise AssertionError(f"the SLURM controller is down: {proc.stderr.strip()}")
    return re.findall(r"JobState=(\S+)", proc.stdout)


def wait(job, timeout=300, want=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = states(job)
        if want and want(s):
            return s
        if s and not want and all(x in TERMINAL for x in s):
            return s
        time.sleep(1)
    raise AssertionError(f"job {job} still {states(job)} after {timeout}s")


def submit(run_dir, store, cpus=1, env_extra=None):
    env = {**os.environ, "HPCSNP_SBATCH_ARGS": f"--cpus-per-task={cpus} --mem=1500M",
           "HPCSNP_TRAIN_ARGS": " ".join(TRAIN), **(env_extra or {})}
    out = subprocess.run([str(SLURM / "submit.sh"), str(run_dir), str(store)], capture_output=True,
                         text=True, env=env, check=True).stdout
    array_id, reduce_id = (run_dir / "logs" / "jobs.txt").read_text().split()
    assert f"job {array_id}" in out and f"job {reduce_id}" in out
    return array_id, reduce_id


@pytest.fixture(scope="module")
def local_cv(sim_store, tmp_path_factory):
    run = tmp_path_factory.mktemp("local") / "run"
    run_cli("cv", sim_store[0], "--run", run, "--threads", 1, *TRAIN)
    return run


def test_array_then_dependent_reduce_matches_local_cv(cluster, sim_store, local_cv, tmp_path):
    run = tmp_path / "run"
    array_id, reduce_id = submit(run, sim_store[0])
    # the preflight sized the tasks' --time (HPCSNP_SBATCH_ARGS sets --mem only) before submitting
    sized = re.search(r"sized here: --time=(\S+)", (run / "logs" / "preflight.txt").read_text()).group(1)
    limit = subprocess.run(["scontrol", "show", "job", array_id], capture_output=True, text=True).stdout
    assert f"TimeLimit={sized}" in limit, (sized, limit)
    assert set(wait(array_id)) == {"COMPLETED"}
    assert wait(reduce_id) == ["COMPLETED"]
    for name in ("fold_pcc_log.csv", "avg_saliency.csv", "top_saliency_snps.csv"):
        a, b = pd.read_csv(local_cv / name), pd.read_csv(run / name)
        cols = [c for c in a.columns if "seconds" not in c and c != "peak_rss_mb"]
        pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=False, rtol=1e-6)
    logs = sorted(p.name for p in (run / "logs").glob(f"{array_id}_*.log"))
    assert logs == [f"{array_id}_1.log", f"{array_id}_2.log", f"{array_id}_3.log"]
    m = json.loads((run / "sim" / "fold_1" / "metrics.json").read_text())
    assert m["slurm_job_id"] and m["threads"] == 1  # from SLURM_CPUS_PER_TASK=1
    pools = m["thread_pools"]
    assert pools["tf_intra_op"] == pools["tf_inter_op"] == 1
    assert pools["OMP_NUM_THREADS"] == pools["OPENBLAS_NUM_THREADS"] == "1"
    assert m["train_cpu_utilisation"] < 1.25, m["train_cpu_utilisation"]

    # resubmitting the finished run redoes nothing
    before = {p: p.stat().st_mtime_ns for p in run.glob("sim/fold_*/metrics.json")}
    array2, reduce2 = submit(run, sim_store[0])
    assert set(wait(array2)) == {"COMPLETED"} and wait(reduce2) == ["COMPLETED"]
    assert {p: p.stat().st_mtime_ns for p in before} == before
    for i in (1, 2, 3):
        assert "already finished" in (run / "logs" / f"{array2}_{i}.log").read_text()


def test_submit_refuses_a_plan_over_its_memory_and_submits_nothing(cluster, sim_store, tmp_path):
    """The preflight runs before sbatch: a --mem below what the CNN's fold was measured to need
    is refused at submission, with the memory to give, and no job is queued."""
    run = tmp_path / "run"
    env = {**os.environ, "HPCSNP_SBATCH_ARGS": "--cpus-per-task=1 --mem=300M", "HPCSNP_TRAIN_ARGS": " ".join(TRAIN)}
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    proc = subprocess.run([str(SLURM / "submit.sh"), str(run), str(sim_store[0])], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "REFUSED" in proc.stdout and "--mem=" in proc.stdout and "nothing submitted" in proc.stderr
    assert not (run / "logs" / "jobs.txt").exists() and not list(run.glob("sim/fold_*"))
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout == before


def _task_at_epoch_3(run, store, fold: int, env: dict, tmp_path) -> str:
    """Submit cv_array.sh as the one task ``fold``; return its array job id once its fold has
    finished epoch 3 (polled for up to ~3 minutes)."""
    job = subprocess.run(["sbatch", "--parsable", f"--array={fold}", "--cpus-per-task=1", "--mem=1500M",
                          f"--output={tmp_path}/%x-%A_%a.out", str(SLURM / "cv_array.sh"), str(run), str(store)],
                         capture_output=True, text=True, env=env, check=True).stdout.strip()
    state = run / "sim" / f"fold_{fold}.partial" / "state.json"
    for _ in range(900):
        if state.exists() and json.loads(state.read_text())["epoch"] >= 3:
            return job
        if "COMPLETED" in states(job):
            pytest.fail("the task ended before it could be interrupted")
        time.sleep(0.2)
    pytest.fail("the task did not reach epoch 3")


def _start_now(task: str) -> None:
    """A requeued task waits (SLURM delays its start): start it now."""
    subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], check=False)
    subprocess.run(["scontrol", "release", task], check=False)


def test_requeued_task_resumes_and_matches_uninterrupted(cluster, sim_store, tmp_path):
    args = ["--epochs", "40", "--patience", "40", "--batch-size", "4", "--dropout", "0.5"]
    whole = tmp_path / "whole"
    run_cli("train", sim_store[0], "--fold", 2, "--run", whole, "--threads", 1, *args)
    run = tmp_path / "run"
    env = {**os.environ, "HPCSNP_TRAIN_ARGS": " ".join(args)}
    job = _task_at_epoch_3(run, sim_store[0], 2, env, tmp_path)
    subprocess.run(["scontrol", "requeue", f"{job}_2"], check=True)
    time.sleep(2)
    _start_now(f"{job}_2")
    assert wait(job, timeout=300) == ["COMPLETED"]
    log = (run / "logs" / f"{job}_2.log").read_text()
    assert "restart 1" in log and re.search(r"resuming after epoch ([3-9]|\d\d)", log), log[-2000:]
    assert ((run / "sim" / "fold_2" / "predictions.csv").read_bytes()
            == (whole / "sim" / "fold_2" / "predictions.csv").read_bytes())


def test_a_task_near_its_time_limit_requeues_itself_and_resumes(cluster, sim_store, tmp_path):
    """SLURM's warning before the time limit (--signal=B:USR1@300, sent here by hand with
    scancel --signal=USR1 --batch): the task requeues itself, the fold stops after its last
    finished epoch, and the requeued task resumes from it and finishes."""
    args = ["--epochs", "40", "--patience", "40", "--batch-size", "4", "--dropout", "0.5"]
    run = tmp_path / "run"
    env = {**os.environ, "HPCSNP_TRAIN_ARGS": " ".join(args), "HPCSNP_BASELINE": "0"}
    job = _task_at_epoch_3(run, sim_store[0], 1, env, tmp_path)
    subprocess.run(["scancel", "--signal=USR1", "--batch", f"{job}_1"], check=True)
    wait(job, timeout=120, want=lambda s: bool(s) and s[0] in ("PENDING", "REQUEUED", "REQUEUE_HOLD"))
    _start_now(f"{job}_1")
    assert wait(job, timeout=300) == ["COMPLETED"]
    log = (run / "logs" / f"{job}_1.log").read_text()
    assert "time limit near: requeueing task 1" in log and "restart 1" in log, log[-2000:]
    assert re.search(r"resuming after epoch ([3-9]|\d\d)", log), log[-2000:]
    assert json.loads((run / "sim" / "fold_1" / "metrics.json").read_text())["slurm_restart_count"] >= 1


def test_a_failed_baseline_never_leaves_the_reduce_pending(cluster, sim_store, tmp_path):
    """A baseline that fails (scipy hidden from it, as a store too large for its memory would
    be refused) is reported in the task's log; the folds train, the tasks succeed, and the
    afterok reduce runs and names the missing baseline."""
    fake = tmp_path / "no_scipy"
    (fake / "scipy").mkdir(parents=True)
    (fake / "scipy" / "__init__.py").write_text("raise ImportError(\"No module named 'scipy' (hidden by the test)\")\n")
    run = tmp_path / "run"
    # without the preflight, which would time the baselines, see them fail and switch them off
    env = {"PYTHONPATH": f"{fake}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HPCSNP_PREFLIGHT": "0"}
    array_id, reduce_id = submit(run, sim_store[0], env_extra=env)
    assert set(wait(array_id)) == {"COMPLETED"}
    assert wait(reduce_id) == ["COMPLETED"]
    task_log = (run / "logs" / f"{array_id}_1.log").read_text()
    assert "baseline of" in task_log and "failed" in task_log and "training goes on" in task_log
    assert (run / "sim" / "fold_3" / "metrics.json").exists() and (run / "fold_pcc_summary.csv").exists()
    reduce_log = "".join(p.read_text() for p in (run / "logs").glob("reduce_*.log"))
    assert "no baseline on these folds" in reduce_log, reduce_log[-2000:]


def test_the_array_trains_each_trait_of_a_table_as_a_data_set(cluster, sim_store, tmp_path):
    """HPCSNP_PHENO + HPCSNP_TRAITS (+ HPCSNP_COVAR): every task trains (and fits the baselines
    of) each trait with the covariates, the preflight probes each, and the reduce reports both
    data sets; a line without a value of a trait is tested in no fold of it."""
    from hpcsnp.store import open_store

    store = open_store(sim_store[0])
    y = store.phenotype.astype(float)
    other = -y + np.random.default_rng(0).normal(0, y.std(), len(y))
    other[::7] = np.nan
    pd.DataFrame({"id": store.sample_id, "a": y, "b": other}).to_csv(tmp_path / "traits.tsv", sep="\t", index=False,
                                                                      na_rep="NA")
    pd.DataFrame({"id": store.sample_id, "trial": np.where(np.arange(len(y)) % 2, "T1", "T2")}).to_csv(
        tmp_path / "covar.tsv", sep="\t", index=False)
    run = tmp_path / "run"
    array_id, reduce_id = submit(run, sim_store[0], env_extra={"HPCSNP_PHENO": str(tmp_path / "traits.tsv"),
                                                               "HPCSNP_TRAITS": " a, b,",  # as --traits reads it
                                                               "HPCSNP_COVAR": str(tmp_path / "covar.tsv")})
    assert set(wait(array_id)) == {"COMPLETED"}
    assert wait(reduce_id) == ["COMPLETED"]
    plan = (run / "logs" / "preflight.txt").read_text()
    assert "sim.a" in plan and "sim.b" in plan, plan
    summary = pd.read_csv(run / "fold_pcc_summary.csv")
    assert {("sim.a", "cnn"), ("sim.b", "cnn"), ("sim.b", "gblup_dosage")} <= set(zip(summary["dataset"],
                                                                                     summary["model"]))
    tested = pd.concat(pd.read_csv(run / "sim.b" / f"fold_{i}" / "predictions.csv", dtype={"sample_id": str})
                       for i in (1, 2, 3))
    assert sorted(tested["sample_id"]) == sorted(np.asarray(store.sample_id, dtype=str)[np.isfinite(other)])
    for ds in ("sim.a", "sim.b"):
        assert json.loads((run / ds / "fold_2" / "metrics.json").read_text())["covariates"] == ["trial=T2"]
        assert json.loads((run / ds / "baseline_dosage" / "fold_2" / "metrics.json").read_text())["covariates"] \
            == ["trial=T2"]


def test_dask_workers_as_slurm_jobs_give_what_local_threads_give(cluster, sim_store, tmp_path):
    """--scheduler slurm:2: a scalable baseline fold whose passes run on two Dask workers, each a
    SLURM job (dask-jobqueue), writes the same predictions, to the bit, as on local threads; the
    worker jobs leave logs and are gone when the command ends."""
    env = {"HPCSNP_DASK_CORES": "1", "HPCSNP_DASK_MEM": "1GB", "HPCSNP_DASK_LOGS": str(tmp_path / "logs")}
    fold = ["baseline", sim_store[0], "--fold", 1, "--encoding", "dosage", "--solver", "scalable"]
    run_cli(*fold, "--run", tmp_path / "threads")
    proc = run_cli(*fold, "--run", tmp_path / "slurm", "--scheduler", "slurm:2", env=env)
    jobs = re.search(r"Dask: 2 worker job\(s\) on SLURM \((\d+), (\d+)\)", proc.stderr)
    assert jobs, proc.stderr[-2000:]
    for job in jobs.groups():
        assert (tmp_path / "logs" / f"hpcsnp-dask-{job}.err").exists()
    left = subprocess.run(["squeue", "-h", "-n", "hpcsnp-dask", "-t", "PENDING,RUNNING"], capture_output=True,
                          text=True).stdout
    assert not any(job in left for job in jobs.groups()), left
    name = "baseline_dosage/fold_1/predictions.csv"
    assert (tmp_path / "slurm" / "sim" / name).read_bytes() == (tmp_path / "threads" / "sim" / name).read_bytes()


def test_reduce_after_partial_array_names_the_sbatch_line(cluster, sim_store, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "HPCSNP_TRAIN_ARGS": " ".join(TRAIN)}
    job = subprocess.run(["sbatch", "--parsable", "--array=1-2", "--cpus-per-task=1", "--mem=1500M",
                          f"--output={tmp_path}/%x-%A_%a.out", str(SLURM / "cv_array.sh"), str(run), str(sim_store[0])],
                         capture_output=True, text=True, env=env, check=True).stdout.strip()
    red = subprocess.run(["sbatch", "--parsable", f"--dependency=afterok:{job}", "--mem=1G",
                          f"--output={tmp_path}/%x-%j.out", str(SLURM / "reduce.sh"), str(run)], capture_output=True, text=True,  # noqa: E501
                         check=True).stdout.strip()
    assert set(wait(job)) == {"COMPLETED"}
    assert wait(red) == ["FAILED"]
    log = (run / "logs" / f"reduce_{red}.log").read_text()
    assert "sim fold 3 (missing)" in log and "sbatch --array=3 slurm/cv_array.sh" in log


def test_every_script_runs_hpcsnp_in_the_image_with_the_stores_bound(cluster, sim_store, tmp_path):
    """HPCSNP_IMAGE set: submit.sh's `info`, every array task and the reduce run
    `RUNTIME exec --bind DIRS IMAGE hpcsnp ...` with the run directory and the store's
    directory bound (a store on another file system must be visible inside the container).
    The runtime is a stand-in that records its arguments and runs the command."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store = elsewhere / "sim.zarr"
    shutil.copytree(sim_store[0], store)
    record = tmp_path / "calls.txt"
    fake = fake_container_runtime(tmp_path / "fake-apptainer", record)
    run = tmp_path / "run"
    array_id, reduce_id = submit(run, store, env_extra={"HPCSNP_IMAGE": "/images/hpcsnp.sif",
                                                        "HPCSNP_CONTAINER": str(fake), "HPCSNP_BASELINE": "0"})
    assert set(wait(array_id)) == {"COMPLETED"} and wait(reduce_id) == ["COMPLETED"]
    calls = [line.split() for line in record.read_text().splitlines()]
    verbs = sorted({c[c.index("hpcsnp") + 1] for c in calls})
    assert verbs == ["cv", "info", "reduce", "train"], calls  # cv: the preflight (--dry-run)
    for c in calls:
        assert c[:2] == ["exec", "--bind"] and c[3:5] == ["/images/hpcsnp.sif", "hpcsnp"], c
        assert str(elsewhere.resolve()) in c[2].split(","), c  # the store's directory, in every script
    assert (run / "fold_pcc_summary.csv").exists()
