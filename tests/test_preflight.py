"""The preflight (`hpcsnp cv --dry-run`, run by slurm/submit.sh): costs measured on a probe
store, checked against a task's --mem and --time before anything trains."""

import json

import numpy as np
import pytest
from helpers import run_cli

from hpcsnp.config import Config
from hpcsnp.run.preflight import (
    SIGNAL_MARGIN_S,
    CnnProbe,
    Grant,
    StorePlan,
    _store_plan,
    check,
    probe_rows,
    write_probe_store,
)
from hpcsnp.store import open_store


def plan(name="a", epoch_s=60.0, cnn_s=3600.0, cnn_mem=1 << 30, solver="exact", baseline_s=100.0,
         baseline_mem=1 << 30):
    return StorePlan(name, 1000, 500, 5, 600, 200, 200, 1, 10, 40, "assumed", epoch_s, cnn_s, cnn_mem, 30.0, 10.0,
                     baseline_solver=solver, baseline_why="", baseline_s=baseline_s, baseline_mem=baseline_mem)


def test_a_cnn_over_its_memory_is_refused_and_baselines_that_cannot_fit_are_switched_off():
    # fits: nothing refused, both parts run, memory the larger of the two, time their sum
    ok = check([plan(baseline_mem=3 << 30)], Grant(cpus=2, mem=4 << 30, time=4 * 3600), 2)
    assert not ok.refusals and ok.baseline and ok.mem_needed == 3 << 30 and ok.task_s == 3700
    # the CNN over --mem: refused, naming the memory to give
    over = check([plan(cnn_mem=5 << 30)], Grant(mem=4 << 30), 2)
    assert over.refusals and "--mem=7G" in over.refusals[0]
    # the exact baselines over --mem (only --solver exact picks them there): refused
    exact = check([plan(baseline_mem=8 << 30)], Grant(mem=4 << 30), 2)
    assert exact.refusals and "--solver exact" in exact.refusals[0]
    # the scalable solver over --mem: the baselines are switched off, the CNN still runs
    scal = check([plan(solver="scalable", baseline_mem=8 << 30)], Grant(mem=4 << 30), 2)
    assert not scal.refusals and not scal.baseline and scal.mem_needed == 1 << 30
    assert "preflight_baseline=0" in scal.shell()
    # baselines longer than one task's time (they are not checkpointed): switched off, not refused
    slow = check([plan(baseline_s=2 * 3600)], Grant(time=3600), 2)
    assert not slow.refusals and not slow.baseline and slow.task_s == 3600
    assert any("requeued" in n for n in slow.notes)  # the CNN's hour needs a requeue in a 1 h task
    # --time shorter than one epoch with start-up and the warning margin: refused
    short = check([plan(epoch_s=900)], Grant(time=900 + SIGNAL_MARGIN_S), 2)
    assert short.refusals and "--time 00:21:00" in short.refusals[0]


def test_unset_mem_and_time_are_sized_from_the_estimate_and_set_ones_are_kept():
    p = check([plan(cnn_s=4 * 3600, baseline_mem=2 << 30)], Grant(cpus=2), 2)
    assert p.sbatch() == ["--mem=3G", "--time=06:02:30"]  # 2 GB x 1.25 + 256 MB; (4 h + 100 s) x 1.5
    assert check([plan()], Grant(mem=4 << 30, time=7200), 2).sbatch() == []


def test_the_probe_is_whole_chunks_of_rows_copied_exactly_with_every_fold(make_store, tmp_path):
    store = open_store(make_store(samples=600, snps=40, chunk_rows=32)[0])
    rows = probe_rows(store, 200)
    assert 200 <= len(rows) < 200 + 32 and np.all(rows[:-1] < rows[1:])
    starts = rows[np.r_[True, np.diff(rows) != 1]]
    assert np.all(starts % 32 == 0)  # whole chunks
    probe = open_store(write_probe_store(store, rows, tmp_path / "probe.zarr").path)
    assert np.array_equal(probe.genotypes[:], store.genotypes[:][rows])
    assert np.array_equal(probe.fold, store.fold[rows]) and np.array_equal(probe.phenotype, store.phenotype[rows])
    assert list(probe.sample_id) == list(store.sample_id[rows]) and probe.n_folds == store.n_folds
    assert np.array_equal(probe_rows(store, 10_000), np.arange(600))  # a small store is probed whole


def test_the_epochs_come_from_the_runs_finished_folds_when_there_are_any(make_store, tmp_path):
    store = open_store(make_store()[0])
    cnn = CnnProbe(step_s=0.1, predict_line_s=0.001, attribution_line_s=0.002, startup_s=5.0, rss_base=5e8)
    cfg = Config(batch_size=16, refit=False, n_models=1, patience_steps=0, patience=5)
    assumed = _store_plan(store, "sim", cfg, cnn, tmp_path / "run")
    assert assumed.epochs == 35 and assumed.epochs_source.startswith("assumed")
    for fold, epochs in ((1, 12), (2, 20)):
        (tmp_path / "run" / "sim" / f"fold_{fold}").mkdir(parents=True)
        (tmp_path / "run" / "sim" / f"fold_{fold}" / "metrics.json").write_text(json.dumps({"epochs": epochs}))
    measured = _store_plan(store, "sim", cfg, cnn, tmp_path / "run")
    assert measured.epochs == 20 and "finished" in measured.epochs_source
    # a fold: epochs x (steps + validation predictions) + test predictions + attributions + start-up
    steps = -(-measured.n_train // 16)
    want = 20 * (steps * 0.1 + measured.n_val * 0.001) + measured.n_test * 0.001 + 0.002 * 240 + 5.0
    assert measured.cnn_s == pytest.approx(want)


def test_dry_run_refuses_a_task_over_its_memory_before_any_training(sim_store, tmp_path):
    run = tmp_path / "run"
    proc = run_cli("cv", sim_store[0], "--run", run, "--dry-run", "--mem", "300M", "--threads", 1, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "REFUSED" in proc.stdout and "the plan cannot run" in proc.stderr
    assert "CNN:" in proc.stdout and "GB" in proc.stdout
    assert not run.exists()  # nothing trained, nothing written

    plan_file = tmp_path / "plan.sh"
    ok = run_cli("cv", sim_store[0], "--run", run, "--dry-run", "--sbatch-args", "--cpus-per-task=1 --mem=2G",
                 "--plan-out", plan_file, "--epochs", 7)
    assert "7 epochs (--epochs 7)" in ok.stdout and "baselines (exact" in ok.stdout
    assert plan_file.read_text().startswith("preflight_sbatch=--time=00:30:00\n")  # --mem given, --time sized
    assert "preflight_baseline=1" in plan_file.read_text() and not run.exists()

    short = run_cli("cv", sim_store[0], "--run", run, "--dry-run", "--time", "5", "--threads", 1, check=False)
    assert short.returncode == 2 and "--time 00:05:00" in short.stdout
