"""Nothing deleted that is not ours, nothing written outside the run, nothing broken that
looks finished: each test here failed before the behaviour it checks was built."""

import ast
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--epochs", "2", "--batch-size", "32", "--models-per-fold", "1", "--threads", "1"]


def _ingest_sim(tmp_path, name="s", **kw):
    from hpcsnp.io.simulate import simulate
    from hpcsnp.io.text import ingest_tsv

    args = {"samples": 120, "snps": 30, "causal": 2, "folds": 3, "seed": 3, **kw}
    simulate(tmp_path / f"{name}.tsv", **args)
    ingest_tsv(tmp_path / f"{name}.tsv", tmp_path / f"{name}.zarr", progress=False, force=True, chunk_rows=64)
    return tmp_path / f"{name}.zarr"


# --- 1. every import is declared; a failed baseline says why and fails the cv -------------

def _third_party_imports() -> set[str]:
    names = set()
    for path in (ROOT / "hpcsnp").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "hpcsnp"}


def test_every_import_of_the_package_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set()
    for req in project["dependencies"] + project["optional-dependencies"]["distributed"]:
        m = re.match(r"([A-Za-z0-9_.-]+)(?:\[([^]]*)\])?", req)
        declared |= {n.strip().lower().replace("_", "-") for n in [m.group(1), *(m.group(2) or "").split(",")] if n}
    providers = metadata.packages_distributions()
    undeclared = {}
    for module in _third_party_imports():
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
        if module == "tensorflow":  # either distribution provides the module (the [gpu] extra's is tensorflow)
            dists |= {"tensorflow", "tensorflow-cpu"}
        if not dists & declared:
            undeclared[module] = sorted(dists)
    assert not undeclared, f"imported but not in pyproject.toml dependencies: {undeclared}"


def test_a_failed_baseline_names_its_cause_and_fails_the_cv(tmp_path):
    store = _ingest_sim(tmp_path)
    fake = tmp_path / "no_scipy"
    (fake / "scipy").mkdir(parents=True)
    (fake / "scipy" / "__init__.py").write_text("raise ImportError(\"No module named 'scipy' (hidden by the test)\")\n")
    env = {"PYTHONPATH": f"{fake}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = run_cli("cv", store, "--run", tmp_path / "run", "--epochs", "2", "--batch-size", "32",
                   "--models-per-fold", "1", "--no-progress", check=False, env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "pcc_mean" in proc.stdout  # the CNN summary is still printed
    assert "baseline FAILED" in proc.stderr and "scipy" in proc.stderr
    assert "O(n^2" not in proc.stderr  # no guessed cause
    last = proc.stderr.strip().splitlines()
    assert any("baseline fit(s) failed" in ln for ln in last[-6:]), last[-6:]


def test_ci_installs_into_a_fresh_virtual_environment():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"python3? -m venv", ci) and "--system-site-packages" not in ci


# --- 2. ingest --force replaces only what is ours ------------------------------------------

def test_force_never_replaces_a_directory_that_is_not_a_store(tmp_path):
    from hpcsnp.io.simulate import simulate

    simulate(tmp_path / "s.tsv", samples=30, snps=10, causal=1, folds=3)
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "thesis.docx").write_text("years of work")
    proc = run_cli("ingest", tmp_path / "s.tsv", "-o", folder, "--force", check=False)
    assert proc.returncode == 2 and "not an hpcsnp store" in proc.stderr
    assert (folder / "thesis.docx").read_text() == "years of work"
    for out in (".", str(tmp_path / "s.tsv")):
        proc = run_cli("ingest", tmp_path / "s.tsv", "-o", out, "--force", check=False, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert (tmp_path / "s.tsv").stat().st_size > 0
    run_cli("ingest", tmp_path / "s.tsv", "-o", tmp_path / "s.zarr")
    again = run_cli("ingest", tmp_path / "s.tsv", "-o", tmp_path / "s.zarr", "--force")  # a store: replaced
    assert "samples      30" in again.stdout


def test_a_killed_ingest_leaves_nothing_the_next_one_keeps(tmp_path):
    from hpcsnp.io.simulate import simulate

    simulate(tmp_path / "s.tsv", samples=30, snps=10, causal=1, folds=3)
    run_cli("ingest", tmp_path / "s.tsv", "-o", tmp_path / "s.zarr")
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = tmp_path / f"s.zarr.tmp-{dead.pid}"
    shutil.copytree(tmp_path / "s.zarr", leftover)
    proc = run_cli("ingest", tmp_path / "s.tsv", "-o", tmp_path / "s.zarr", "--force")
    assert not leftover.exists() and "left by an ingest that was killed" in proc.stderr


# --- 3. data-set names stay inside the run ---------------------------------------------------

@pytest.mark.parametrize("name", ["../../escaped", "/tmp/abs", "..", "a/b", ".hidden"])
def test_a_name_cannot_leave_the_run_directory(sim_store, tmp_path, name):
    run = tmp_path / "deep" / "run"
    for verb in ("train", "baseline"):
        proc = run_cli(verb, sim_store[0], "--fold", 1, "--run", run, "--name", name, *QUICK[-2:], check=False)
        assert proc.returncode == 2 and "not a plain name" in proc.stderr, proc.stderr
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "deep" / "escaped").exists()
    assert not run.exists() or not any(run.rglob("*.json"))


# --- 4. damaged or extreme input never looks finished ---------------------------------------

def test_a_deleted_or_corrupt_genotype_chunk_is_an_error_naming_it(tmp_path):
    store = _ingest_sim(tmp_path, samples=300)
    chunks = sorted((store / "call_dosage" / "c").iterdir())
    assert len(chunks) >= 2
    shutil.rmtree(chunks[1])
    for verb in (["info", store], ["train", store, "--fold", 1, "--run", tmp_path / "run"]):
        proc = run_cli(*verb, check=False)
        assert proc.returncode == 2 and "chunk(s) of call_dosage are missing" in proc.stderr, proc.stderr
    store = _ingest_sim(tmp_path, name="c", samples=300)
    victim = next((store / "call_dosage" / "c").iterdir())
    (victim / "0").write_bytes(b"not a zstd frame")
    proc = run_cli("train", store, "--fold", 1, "--run", tmp_path / "run2", *QUICK, check=False)
    assert proc.returncode == 2 and re.search(r"genotype chunk \d+ \(samples \d+-\d+\) cannot be read",
                                              proc.stderr), proc.stderr
    assert not (tmp_path / "run2" / "c" / "fold_1").exists()


def test_phenotypes_beyond_float32_are_refused_and_huge_ones_train(tmp_path, tsv):
    rows = "".join(f"{i % 3 + 1}\t{v}\t{i % 3}\t{(i // 3) % 3}\n" for i, v in enumerate([1, 2, 3, 1e300, 5, 6]))
    proc = run_cli("ingest", tsv("fold\tphenotype\ta_1\tb_2\n" + rows), "-o", tmp_path / "x.zarr", check=False)
    assert proc.returncode == 2 and ":5: column 2 (phenotype)" in proc.stderr and "float32" in proc.stderr
    assert not (tmp_path / "x.zarr").exists()
    import pandas as pd

    from hpcsnp.io.simulate import simulate
    from hpcsnp.io.text import ingest_tsv

    simulate(tmp_path / "big.tsv", samples=120, snps=30, causal=2, folds=3, seed=2)
    t = pd.read_csv(tmp_path / "big.tsv", sep="\t")
    t["phenotype"] = (t["phenotype"] - 100) * 1e30  # +-1e31: float32 sums of squares overflow
    t.to_csv(tmp_path / "big.tsv", sep="\t", index=False)
    ingest_tsv(tmp_path / "big.tsv", tmp_path / "big.zarr", progress=False)
    out = run_cli("train", tmp_path / "big.zarr", "--fold", 1, "--run", tmp_path / "run", *QUICK)
    m = json.loads((tmp_path / "run" / "big" / "fold_1" / "metrics.json").read_text())
    assert all(map(lambda v: abs(v) < float("inf"), (m["pcc"], m["mse"], m["target_sd"]))), out.stdout


def test_folds_whose_metrics_cannot_be_computed_are_refused(tmp_path, tsv):
    head = "fold\tphenotype\ta_1\tb_2\n"
    one_test = "".join(f"{f}\t{i}\t{i % 3}\t{(i * 7) % 3}\n" for i, f in enumerate([1] + [2, 3] * 6))
    constant = "".join(f"{i % 3 + 1}\t5\t{i % 3}\t{(i * 7) % 3}\n" for i in range(12))
    for text, message in ((one_test, "its test set has 1 sample(s)"), (constant, "the phenotype is the same")):
        from hpcsnp.io.text import ingest_tsv

        path = tsv(head + text)
        ingest_tsv(path, path.with_suffix(".zarr"), progress=False)
        for verb in ("train", "baseline"):
            proc = run_cli(verb, path.with_suffix(".zarr"), "--fold", 1, "--run", tmp_path / "run", check=False)
            assert proc.returncode == 2 and message in proc.stderr, proc.stderr
            assert proc.stderr.count("\n") == 1
    assert not list((tmp_path / "run").rglob("metrics.json"))


def _train_folds(store, run, folds=(1, 2, 3), cfg=None, **kw):
    from hpcsnp.cnn.train import train_fold
    from hpcsnp.config import Config

    cfg = cfg or Config(max_epochs=2, batch_size=32, n_models=1)
    for i in folds:
        train_fold(store, i, run, cfg, threads=1, **kw)


def test_reduce_refuses_a_fold_with_nan_or_truncated_metrics(sim_store, tmp_path):
    from hpcsnp.errors import IncompleteRunError
    from hpcsnp.run.reduce import reduce_run

    _train_folds(sim_store[0], tmp_path)
    path = tmp_path / "sim" / "fold_2" / "metrics.json"
    m = json.loads(path.read_text())
    path.write_text(json.dumps({**m, "pcc": float("nan")}))
    with pytest.raises(IncompleteRunError, match=r"sim fold 2 \(its metrics are not finite"):
        reduce_run(tmp_path, plot=False)
    path.write_text(json.dumps(m)[:100])
    with pytest.raises(IncompleteRunError, match=r"sim fold 2 \(.*metrics.json is truncated or unreadable\)"
                                                 r".*--config .*config.json --force"):
        reduce_run(tmp_path, plot=False)


# --- 5, 6. settings: resume, redo, reduce ---------------------------------------------------

def test_a_checkpoint_resumes_only_with_its_own_settings(sim_store, tmp_path, monkeypatch, caplog):
    import logging

    from hpcsnp.cnn.checkpoint import Checkpointer
    from hpcsnp.cnn.train import train_fold
    from hpcsnp.config import Config
    from hpcsnp.errors import InputError

    class Killed(Exception):
        pass

    save_epoch = Checkpointer.save_epoch

    def die_after_epoch_2(self, state, epoch):
        save_epoch(self, state, epoch)
        if epoch == 2:
            raise Killed
    cfg = Config(max_epochs=6, patience=10, batch_size=32, n_models=1)
    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "save_epoch", die_after_epoch_2)
        with pytest.raises(Killed):
            train_fold(sim_store[0], 1, tmp_path, cfg, threads=1)
    assert (tmp_path / "sim" / "fold_1.partial" / "state.json").exists()
    other = cfg.replace(batch_size=16, learning_rate=0.01)
    with pytest.raises(InputError, match=r"config.json holds this run's settings.*batch_size 32 vs 16.*"
                                         r"learning_rate 0.003 vs 0.01"):
        train_fold(sim_store[0], 1, tmp_path, other, threads=1)
    (tmp_path / "config.json").unlink()  # without the run's settings the checkpoint's still hold
    with pytest.raises(InputError, match=r"checkpointed with other settings.*batch_size 32 vs 16.*--force"):
        train_fold(sim_store[0], 1, tmp_path, other, threads=1)
    (tmp_path / "config.json").unlink()
    with caplog.at_level(logging.INFO, logger="hpcsnp"):
        train_fold(sim_store[0], 1, tmp_path, cfg, threads=1)
    assert any("resuming after epoch 2" in r.getMessage() for r in caplog.records)


def test_reduce_refuses_folds_trained_with_other_settings_and_redo_keeps_the_run_settings(sim_store, tmp_path):
    from hpcsnp.config import Config
    from hpcsnp.errors import IncompleteRunError
    from hpcsnp.run.reduce import reduce_run

    _train_folds(sim_store[0], tmp_path, folds=(1, 2))
    (tmp_path / "config.json").unlink()
    _train_folds(sim_store[0], tmp_path, folds=(3,), cfg=Config(max_epochs=2, batch_size=16, n_models=1))
    with pytest.raises(IncompleteRunError) as err:
        reduce_run(tmp_path, plot=False)
    text = str(err.value)
    assert "sim fold 1 (trained with other settings than the run's: batch_size 16 vs 32" in text
    assert f"--config {tmp_path / 'config.json'} --force" in text
    assert re.search(r'HPCSNP_TRAIN_ARGS="--config \S+config.json --force" sbatch --array=1,2 ', text), text
    # the printed redo command, run as printed, makes the run whole again
    for line in text.splitlines():
        if "hpcsnp train" in line:
            run_cli(*line.split("hpcsnp ", 1)[1].split(), "--threads", "1")
    assert reduce_run(tmp_path, plot=False)["summary"].loc[0, "n_folds"] == 3


def test_cv_refuses_other_settings_on_a_run_that_has_folds(sim_store, tmp_path):
    _train_folds(sim_store[0], tmp_path, folds=(1,))
    proc = run_cli("cv", sim_store[0], "--run", tmp_path, "--epochs", "3", check=False)
    assert proc.returncode == 2 and "max_epochs 2 vs 3" in proc.stderr and "--force" in proc.stderr


# --- 7, 8. one store write per data set, one data set per name ------------------------------

def test_a_re_ingested_store_is_not_mixed_with_folds_of_the_old_one(tmp_path):
    from hpcsnp.errors import IncompleteRunError, InputError
    from hpcsnp.run.reduce import reduce_run

    store = _ingest_sim(tmp_path)
    run = tmp_path / "run"
    _train_folds(store, run)
    _ingest_sim(tmp_path, seed=9)  # same shape, other phenotypes
    proc = run_cli("train", store, "--fold", 1, "--run", run, check=False)
    assert proc.returncode == 2 and "another write of a store named 's'" in proc.stderr
    with pytest.raises(InputError, match="was re-ingested after"):
        reduce_run(run, plot=False)
    cv = run_cli("cv", store, "--run", run, "--epochs", "2", "--batch-size", "32", check=False)
    assert cv.returncode == 2 and "of data set 's' from another write of the store" in cv.stderr
    # a baseline would bind the trained data set to the new write: refused, unless --force says it is meant
    proc = run_cli("baseline", store, "--fold", 1, "--run", run, check=False)
    assert proc.returncode == 2 and "finished fold(s)" in proc.stderr and "--force to redo" in proc.stderr
    assert not (run / "s" / "baseline_dosage" / "fold_1").exists()
    run_cli("baseline", store, "--fold", 1, "--run", run, "--force")  # fits, and the data set is the new store's
    with pytest.raises(IncompleteRunError, match=r"s fold 1 \(trained on another write of the store"):
        reduce_run(run, plot=False)
    _ingest_sim(tmp_path, snps=40)  # another shape: no internal error either
    _train_folds(store, run, folds=(1,), force=True)
    with pytest.raises(IncompleteRunError, match=r"s fold 2 \(trained on another write of the store"):
        reduce_run(run, plot=False)


def test_two_stores_with_one_file_name_need_names(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = _ingest_sim(tmp_path / "a", name="x"), _ingest_sim(tmp_path / "b", name="x", seed=5)
    proc = run_cli("cv", a, b, "--run", tmp_path / "run", check=False)
    assert proc.returncode == 2 and "would both be data set 'x'" in proc.stderr and "--name" in proc.stderr
    assert not (tmp_path / "run" / "x").exists()
    proc = run_cli("cv", a, b, "--run", tmp_path / "run", "--name", "only_one", check=False)
    assert proc.returncode == 2 and "one name per store" in proc.stderr
    from hpcsnp.run.cv import plan_datasets

    assert [n for _, n in plan_datasets([a, b], ["x_a", "x_b"], tmp_path / "run")] == ["x_a", "x_b"]


# --- 9. fold processes end with their cv -----------------------------------------------------

def _children_of(pid: int) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4: the parent's pid
                found.append(int(d.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's prctl")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_fold_processes_end_with_their_cv(sim_store, tmp_path, sig):
    from hpcsnp.rundir import RunDir

    run = RunDir(tmp_path)

    cv = subprocess.Popen([sys.executable, "-m", "hpcsnp", "cv", str(sim_store[0]), "--run", str(tmp_path),
                           "--epochs", "500", "--patience", "500", "--batch-size", "4", "--no-baseline",
                           "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(600):  # up to ~60 s for the fold processes to hold their locks
        if any(run.holder("sim", i) for i in (1, 2, 3)):
            break
        time.sleep(0.1)
    else:
        cv.kill()
        pytest.fail("no fold started")
    children = _children_of(cv.pid)
    assert children
    cv.send_signal(sig)
    cv.wait()
    for _ in range(300):  # bounded wait for the kernel's SIGTERM and the folds' checkpoint
        if not any(Path(f"/proc/{c}").exists() and "Z" not in (Path(f"/proc/{c}/stat").read_text().split()[2])
                   for c in children):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"fold processes {children} outlived their cv")
    assert not any(run.holder("sim", i) for i in (1, 2, 3))
    if sig == signal.SIGTERM:
        assert cv.returncode == 143 and "terminated by signal" in cv.stderr.read().decode()


# --- the principle: one line, exit 2, the file named ----------------------------------------

def test_a_truncated_gzip_is_a_one_line_error(tmp_path):
    from hpcsnp.io.simulate import simulate

    simulate(tmp_path / "s.tsv.gz", samples=200, snps=50, causal=1, folds=3)
    data = (tmp_path / "s.tsv.gz").read_bytes()
    (tmp_path / "cut.tsv.gz").write_bytes(data[: len(data) // 2])
    proc = run_cli("ingest", tmp_path / "cut.tsv.gz", check=False, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert re.search(r"cut.tsv.gz:\d+: the gzip stream is truncated", proc.stderr), proc.stderr
    assert not list(tmp_path.glob("cut*.zarr*"))
    gzip.decompress(data)  # the original was fine


@pytest.mark.parametrize("header,message", [
    ("phenotype\tfold\ta_1\n", r"column 1 is named 'phenotype'; expected 'fold'"),
    ("id\tphenotype\tfold\ta_1\n", r"column 2, after the sample-id column, is named 'phenotype'"),
    ("fold\tChr1_100\tChr1_200\n", r"column 2 should be the phenotype, but it is named 'Chr1_100'"),
])
def test_header_columns_are_checked_by_name(tsv, tmp_path, header, message):
    from hpcsnp.errors import ParseError
    from hpcsnp.io.text import ingest_tsv

    with pytest.raises(ParseError, match=message):
        ingest_tsv(tsv(header + "1\t2\t0\n" * 3), tmp_path / "o.zarr", progress=False)


def test_a_named_id_column_before_fold_is_read_as_ids(tsv, tmp_path):
    from hpcsnp.io.text import ingest_tsv
    from hpcsnp.store import open_store

    rows = "".join(f"L{i}\t{i % 3 + 1}\t{i}\t{i % 3}\n" for i in range(6))
    ingest_tsv(tsv("strain_name\tfold\theight\tChr1_5\n" + rows), tmp_path / "o.zarr", progress=False)
    assert list(open_store(tmp_path / "o.zarr").sample_id) == [f"L{i}" for i in range(6)]


def test_bad_thread_settings_are_said_and_capped(monkeypatch):
    from hpcsnp.resources import granted_cpus

    said = []
    monkeypatch.setattr("hpcsnp.resources._available_cpus", lambda: 4)
    assert granted_cpus(env={"HPCSNP_THREADS": "two", "SLURM_CPUS_PER_TASK": "3"}, warn=said.append) == 3
    assert granted_cpus(env={"SLURM_CPUS_PER_TASK": "4(x2)"}, warn=said.append) == 4
    assert granted_cpus(64, env={}, warn=said.append) == 4
    assert said == ["HPCSNP_THREADS='two' is not a positive integer; ignored",
                    "SLURM_CPUS_PER_TASK='4(x2)' is not a positive integer; ignored",
                    "--threads asks for 64 threads but this process may use 4 core(s); using 4"]
    proc = run_cli("info", "--help", env={"HPCSNP_THREADS": "lots"})
    assert proc.returncode == 0


def test_options_that_do_nothing_are_named(tmp_path):
    from hpcsnp.io.simulate import simulate

    simulate(tmp_path / "s.tsv", samples=30, snps=10, causal=1, folds=3)
    proc = run_cli("ingest", tmp_path / "s.tsv", "-o", tmp_path / "s.zarr", "--folds", 5, "--min-maf", 0.05)
    assert "--folds, --min-maf ignored for text input" in proc.stderr


def test_cv_without_settings_options_continues_a_run_with_its_own_settings(sim_store, tmp_path):
    _train_folds(sim_store[0], tmp_path, folds=(1, 2, 3))
    before = (tmp_path / "config.json").read_text()
    proc = run_cli("cv", sim_store[0], "--run", tmp_path, "--no-baseline", "--no-progress")
    assert "pcc_mean" in proc.stdout and (tmp_path / "config.json").read_text() == before
