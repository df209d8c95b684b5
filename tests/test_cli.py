"""Through the CLI, as a user runs it: simulate -> ingest -> cv -> reduce -> query."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import run_cli

from hpcsnp.resources import cap_threads, granted_cpus

QUICK = ["--epochs", "40", "--patience", "8", "--batch-size", "16", "--lr", "0.003", "--dropout", "0.5",
         "--seeds", "1"]


def test_end_to_end_finds_planted_snps(tmp_path):
    run_cli("simulate", tmp_path / "sim.tsv.gz", "--samples", 900, "--snps", 200, "--causal", 5,
            "--folds", 3, "--missing", 0.05, "--seed", 7)
    causal = pd.read_csv(tmp_path / "sim.tsv.gz.causal.tsv", sep="\t")["snp"].tolist()
    ingest = run_cli("ingest", tmp_path / "sim.tsv.gz", cwd=tmp_path)
    assert "samples      900" in ingest.stdout and (tmp_path / "sim.zarr").exists()
    cv = run_cli("cv", tmp_path / "sim.zarr", "--run", tmp_path / "run", *QUICK)
    assert "pcc_mean" in cv.stdout
    summary = pd.read_csv(tmp_path / "run" / "fold_pcc_summary.csv")
    assert summary.loc[0, "n_folds"] == 3
    assert summary.loc[0, "pcc_mean"] > 0.2, summary
    top = pd.read_csv(tmp_path / "run" / "top_saliency_snps.csv")
    assert len(top) == 20
    assert set(causal) <= set(top["snp"]), (causal, top["snp"].tolist())
    q = run_cli("query", "--run", tmp_path / "run", causal[0])
    rows = [line.split("\t") for line in q.stdout.strip().splitlines()]
    assert rows[0] == ["dataset", "snp", "chrom", "pos", "saliency", "rank", "of"]
    assert rows[1][1] == causal[0] and int(rows[1][5]) <= 20 and rows[1][6] == "200"
    # rerunning cv redoes nothing: every fold is finished
    again = run_cli("cv", tmp_path / "sim.zarr", "--run", tmp_path / "run", *QUICK)
    assert "fold 1: PCC" not in again.stderr
    logs = sorted(p.name for p in (tmp_path / "run" / "logs").iterdir())
    assert logs == sorted(f"sim_fold{i}{kind}.log" for i in (1, 2, 3) for kind in ("", ".baseline"))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["batch_size"] == 16 and saved["dropout"] == 0.5
    # folds that ran at the same time had cores of their own (when the machine has several)
    from hpcsnp.resources import granted_cpus
    from hpcsnp.run.cv import core_slots, plan_jobs

    slots = core_slots(*plan_jobs(granted_cpus(), 3), granted_cpus())
    affinity = [json.loads((tmp_path / "run" / "sim" / f"fold_{i}" / "metrics.json").read_text())["cpu_affinity"]
                for i in (1, 2, 3)]
    if slots[0] is not None:
        assert all(a in slots for a in affinity), (affinity, slots)


def test_train_one_fold_and_reduce_refusal_through_cli(sim_store, tmp_path):
    store, _ = sim_store
    out = run_cli("train", store, "--fold", 2, "--run", tmp_path, "--epochs", 1, "--batch-size", 32,
                  "--genotype-basis", "onehot", "--dosage-scale", 2, "--l2-dense", 0,
                  "--missing-dosage", "zero")
    assert out.stdout.startswith("sim\tfold 2\tpcc ")
    recorded = json.loads((tmp_path / "sim" / "fold_2" / "metrics.json").read_text())["config"]
    assert (recorded["genotype_basis"], recorded["dosage_scale"], recorded["l2_dense"], recorded["missing_dosage"]) == (
        "onehot", 2.0, 0.0, "zero")
    assert "epoch    1" in out.stderr  # progress on stderr, result on stdout
    proc = run_cli("reduce", "--run", tmp_path, check=False)
    assert proc.returncode == 1
    assert "sim fold 1 (missing)" in proc.stderr and "hpcsnp train" in proc.stderr
    bad = run_cli("train", store, "--fold", 4, "--run", tmp_path, check=False)
    assert bad.returncode == 2 and "fold 4 is outside 1..3" in bad.stderr


def test_query_unknown_snp_suggests_close_names(tmp_path):
    (tmp_path / "avg_saliency.csv").write_text(
        "dataset,snp,chrom,pos,saliency,rank\nd,Gm03_1592339,Gm03,1592339,0.1,1\nd,Gm03_1592,Gm03,1592,0.05,2\n")
    proc = run_cli("query", "--run", tmp_path, "Gm03_159233", check=False)
    assert proc.returncode == 2 and "did you mean Gm03_1592339" in proc.stderr
    missing = run_cli("query", "--run", tmp_path / "nothing", "x", check=False)
    assert missing.returncode == 2 and "hpcsnp reduce" in missing.stderr


def test_help_and_ingest_do_not_import_tensorflow(tmp_path):
    from hpcsnp.io.simulate import simulate

    simulate(tmp_path / "s.tsv", samples=30, snps=10, causal=1, folds=3)
    code = ("import sys; from hpcsnp.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n")
    for args in (["--help"], ["ingest", "--help"], ["ingest", str(tmp_path / "s.tsv"), "-o", str(tmp_path / "s.zarr")]):
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def package_modules() -> list[str]:
    """Every module of hpcsnp, by its dotted name."""
    import hpcsnp

    root = Path(hpcsnp.__file__).parent
    return sorted("hpcsnp." + ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
                  for p in root.rglob("*.py") if p.stem != "__main__")


def test_only_the_cnn_subpackage_loads_tensorflow():
    """Every module outside hpcsnp.cnn imports without TensorFlow (train, predict and the CLI
    reach the networks through functions that import them when they run), so the verbs that
    never run a network (ingest, gwas, reduce, info, query) start without it."""
    modules = [m for m in package_modules() if not m.startswith("hpcsnp.cnn.")]
    assert {"hpcsnp.run.reduce", "hpcsnp.run.ranking", "hpcsnp.linear.gwas", "hpcsnp.run.predict",
            "hpcsnp.cli", "hpcsnp.cnn", "hpcsnp.io.text"} <= set(modules)
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + (
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "assert not loaded, f'tensorflow was imported: {loaded[:3]}'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_verbose_and_quiet_work_after_the_verb_too(tmp_path):
    """-v and -q are read before or after the verb: -q leaves warnings and errors only, -v
    adds the debug lines."""
    run_cli("simulate", tmp_path / "q.tsv", "--samples", 60, "--snps", 20)
    run_cli("ingest", tmp_path / "q.tsv", "-o", tmp_path / "q.zarr", "--no-progress")
    normal = run_cli("baseline", tmp_path / "q.zarr", "--run", tmp_path / "a")
    quiet = run_cli("baseline", tmp_path / "q.zarr", "--run", tmp_path / "b", "-q")
    assert "gblup_dosage: PCC" in normal.stderr and quiet.stderr == "" and quiet.stdout == normal.stdout
    loud = run_cli("baseline", tmp_path / "q.zarr", "--run", tmp_path / "c", "-v")
    assert "[hpcsnp.resources]" in loud.stderr and "gblup_dosage: PCC" in loud.stderr


def test_train_and_cv_help_group_the_settings():
    """The verb's own options first, then the settings by what they change; none lost."""
    for verb in ("train", "cv"):
        out = run_cli(verb, "--help").stdout
        heads = [line for line in out.splitlines() if line and not line.startswith(" ")]
        assert heads[1:] == ["Options:", "Settings as a whole:", "Training:", "Model:", "Attribution:",
                             "Speed and memory:"], heads
        training = out.split("Training:")[1].split("Model:")[0]
        assert "--epochs" in training and "--models-per-fold" in training and "--genotype-basis" not in training
        assert "--genotype-basis" in out.split("Model:")[1].split("Attribution:")[0]
        assert out.split("Options:")[1].split("Settings as a whole:")[0].count("--run") == 1


def test_help_explains_every_verb():
    for verb in ("ingest", "train", "cv", "reduce", "query", "simulate"):
        out = run_cli(verb, "--help").stdout
        assert "Usage: hpcsnp " + verb in out and len(out.splitlines()) > 5


@pytest.mark.parametrize("env,flag,expect", [
    ({"SLURM_CPUS_PER_TASK": "3"}, None, 3),
    ({"SLURM_CPUS_PER_TASK": "3"}, 1, 1),
    ({}, None, None),
])
def test_threads_come_from_flag_then_slurm_then_affinity(monkeypatch, env, flag, expect):
    import os

    from hpcsnp.resources import THREAD_ENV

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.delenv("HPCSNP_THREADS", raising=False)
    monkeypatch.setattr("hpcsnp.resources._available_cpus", lambda: 8)  # so 3 is not above the cores
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for name in THREAD_ENV:  # cap_threads writes these: let monkeypatch restore them afterwards
        monkeypatch.setenv(name, "unset-by-test")
    n = cap_threads(flag)
    assert n == (expect or 8) == granted_cpus(flag)
    assert os.environ["OMP_NUM_THREADS"] == os.environ["TF_NUM_INTRAOP_THREADS"] == str(n)


def test_hpcsnp_threads_env_and_cgroup_quota(monkeypatch, tmp_path):
    from hpcsnp.resources import _cgroup_cpu_quota

    monkeypatch.setenv("HPCSNP_THREADS", "5")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    monkeypatch.setattr("hpcsnp.resources._available_cpus", lambda: 8)
    assert granted_cpus() == 5 and granted_cpus(2) == 2
    v2, unlimited, v1 = tmp_path / "v2", tmp_path / "max", tmp_path / "v1"
    for d in (v2, unlimited, v1 / "cpu"):
        d.mkdir(parents=True)
    (v2 / "cpu.max").write_text("150000 100000\n")
    (unlimited / "cpu.max").write_text("max 100000\n")
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_cpu_quota(v2) == 2 and _cgroup_cpu_quota(unlimited) is None
    assert _cgroup_cpu_quota(v1) == 1 and _cgroup_cpu_quota(tmp_path / "absent") is None


def test_huge_pages_env_asks_glibc_where_the_kernel_offers_them(monkeypatch, tmp_path):
    from hpcsnp.resources import huge_pages_env

    monkeypatch.setattr("platform.libc_ver", lambda: ("glibc", "2.36"))
    thp = tmp_path / "enabled"
    asked = {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", "HPCSNP_RESTARTED": "1"}
    for setting in ("always [madvise] never\n", "[always] madvise never\n"):
        thp.write_text(setting)
        assert huge_pages_env({"A": "1"}, thp) == asked
    # the user's own tunables are kept; their own choice of huge pages is left as it is
    mine = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert huge_pages_env(mine, thp)["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, thp) is None
    assert huge_pages_env({"HPCSNP_RESTARTED": "1"}, thp) is None  # once, whatever became of the tunable
    thp.write_text("always madvise [never]\n")
    assert huge_pages_env({}, thp) is None
    assert huge_pages_env({}, tmp_path / "absent") is None
    thp.write_text("always [madvise] never\n")
    for libc in (("glibc", "2.31"), ("glibc", ""), ("", "")):  # the tunable is glibc 2.35's; musl, macOS
        monkeypatch.setattr("platform.libc_ver", lambda libc=libc: libc)
        assert huge_pages_env({}, thp) is None


def test_the_hpcsnp_command_starts_again_with_huge_pages_once(tmp_path):
    """`python -m hpcsnp` and the console script replace their process by themselves once, under
    glibc's huge-page tunable, with the same arguments; a script that calls main() does not."""
    import os
    import shutil

    from hpcsnp.resources import huge_pages_env

    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "HPCSNP_RESTARTED")}
    if huge_pages_env(env) is None:
        pytest.skip("no transparent huge pages for glibc's malloc here (glibc < 2.35, not glibc, or THP off)")
    # every interpreter start says its pid and tunables, before and after the exec
    (tmp_path / "sitecustomize.py").write_text(
        "import os, sys\nprint('start', os.getpid(), os.environ.get('GLIBC_TUNABLES'), file=sys.stderr)\n")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH")) if p)
    version = "hpcsnp, version " + __import__("hpcsnp").__version__
    script = tmp_path / "mine.py"
    script.write_text("import sys\nsys.argv[1:] = ['--version']\nfrom hpcsnp.cli import main\nmain()\n")
    console = shutil.which("hpcsnp", path=str(Path(sys.executable).parent))
    commands = [[sys.executable, "-m", "hpcsnp", "--version"]] + ([[console, "--version"]] if console else [])
    for cmd in commands + [[sys.executable, str(script)]]:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=120)
        starts = [ln.split() for ln in proc.stderr.splitlines() if ln.startswith("start ")]
        assert proc.stdout.strip() == version, (cmd, proc.stdout)
        if cmd[-1] == str(script):
            assert starts == [["start", starts[0][1], "None"]], (cmd, starts)  # not restarted
            continue
        assert [s[2:] for s in starts] == [["None"], ["glibc.malloc.hugetlb=1"]], (cmd, starts)
        assert starts[0][1] == starts[1][1]  # the same process, started again
    off = subprocess.run(commands[0], env={**env, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},
                         capture_output=True, text=True, check=True, timeout=120)
    assert [ln for ln in off.stderr.splitlines() if ln.startswith("start ")][1:] == []


def test_demo_runs_the_whole_job_and_ranks_the_planted_snps(tmp_path):
    proc = run_cli("demo", tmp_path / "q", "--samples", 300, "--snps", 60, "--threads", 1, "--no-progress")
    assert "planted causal SNPs, rank by the combined score and by mean saliency:" in proc.stdout
    ranks = proc.stdout.split("and by mean saliency:")[1].split()
    head = ["snp", "combined", "combined_rank", "saliency", "rank", "of"]
    assert ranks[:6] == head and len(ranks) == 6 + 5 * 6  # the 5 planted SNPs
    summary = pd.read_csv(tmp_path / "q" / "run" / "fold_pcc_summary.csv")
    assert set(summary["model"]) == {"cnn", "gblup_dosage", "gblup_onehot", "rkhs", "rkhs_local", "ensemble"}
    for name in ("fold_pcc.png", "observed_vs_predicted.png", "avg_saliency_across_folds.png"):
        assert (tmp_path / "q" / "run" / name).stat().st_size > 10_000
    again = run_cli("demo", tmp_path / "q", "--samples", 300, "--snps", 60, "--threads", 1, "--no-progress")
    assert again.stdout.split("and by mean saliency:")[1] == proc.stdout.split("and by mean saliency:")[1]


def test_the_demo_refuses_a_folder_of_the_users(tmp_path):
    (tmp_path / "mine.txt").write_text("mine\n")
    proc = run_cli("demo", tmp_path, check=False)
    assert proc.returncode == 2 and "holds files the demo did not write (mine.txt)" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_info_describes_a_store(sim_store):
    out = run_cli("info", sim_store[0]).stdout
    assert "samples      240" in out and "SNPs         60" in out and "K=3" in out
    assert "format       version 2" in out and "alleles      unknown" in out and "missing      " in out
    assert run_cli("info", "--folds", sim_store[0]).stdout.strip() == "3"
    missing = run_cli("info", sim_store[0].parent / "nothing.zarr", check=False)
    assert missing.returncode == 2 and "no such store" in missing.stderr


def test_every_verb_that_writes_outside_a_run_takes_o(tmp_path):
    """-o names what the verb writes (simulate's TSV here); the older positional OUT still
    works, both at once are refused, and so is neither."""
    run_cli("simulate", "-o", tmp_path / "a.tsv", "--samples", 30, "--snps", 10)
    run_cli("simulate", tmp_path / "b.tsv", "--samples", 30, "--snps", 10)
    assert (tmp_path / "a.tsv").read_text() == (tmp_path / "b.tsv").read_text()
    both = run_cli("simulate", tmp_path / "c.tsv", "-o", tmp_path / "d.tsv", check=False)
    assert both.returncode == 2 and "not both" in both.stderr and not (tmp_path / "c.tsv").exists()
    neither = run_cli("simulate", "--samples", 30, check=False)
    assert neither.returncode == 2 and "-o PATH" in neither.stderr
    for verb in ("ingest", "gwas", "predict", "simulate", "demo"):
        assert "-o, --out" in run_cli(verb, "--help").stdout, verb


def test_a_crash_in_a_native_library_names_its_call_in_the_log_and_in_cvs_summary(tmp_path):
    """A segmentation fault (here forced with ctypes, as a BLAS bug would raise one) after main()
    has run writes faulthandler's Python stack to stderr, and cv's failure_cause turns that log
    into the crash and the innermost call instead of a line of extension-module names."""
    from hpcsnp.run.cv import failure_cause

    code = ("import ctypes\nfrom hpcsnp.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n"
            "    pass\nctypes.string_at(0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Fatal Python error: Segmentation fault" in proc.stderr, proc.stderr[-500:]
    log = tmp_path / "fold.log"
    log.write_text(proc.stdout + proc.stderr)
    cause = failure_cause(log)
    assert cause.startswith("Segmentation fault in a native library, at File") and "in string_at" in cause, cause
