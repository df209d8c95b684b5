import os

import pytest
from helpers import FAST, write_tsv

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The fast tier (`python -m pytest -m fast`, under two minutes): the tests of the modules that
# train no network (store, readers, run directory, registry, ensemble, new-lines alignment,
# loci, GWAS and REML algebra, config) and the doctests outside hpcsnp/cnn.  A module named
# here is fast but for the tests listed with it, which train networks or run whole jobs;
# every other test (training, SLURM, containers) runs in the default `python -m pytest`.
FAST_TIER = {
    "test_contract.py": set(),
    "test_ingest.py": set(),
    "test_ingest_genotypes.py": set(),
    "test_gwas.py": set(),
    "test_scalable.py": set(),
    "test_preflight.py": {"test_dry_run_refuses_a_task_over_its_memory_before_any_training"},
    "test_figures.py": set(),
    "test_traits.py": {"test_cv_of_two_traits_then_reduce_and_predict"},
    "test_covariates.py": {"test_a_covariate_equal_to_the_test_fold_phenotypes_cannot_leak_into_its_test_pcc",
                           "test_covariates_through_cv_and_predict"},
    "test_baseline.py": {"test_baseline_fold_and_reduce_report_it_beside_the_cnn"},
    "test_cli.py": {"test_demo_runs_the_whole_job_and_ranks_the_planted_snps", "test_end_to_end_finds_planted_snps",
                    "test_train_one_fold_and_reduce_refusal_through_cli"},
    "test_attribution.py": "test_clumping_merges_a_block_in_perfect_ld_and_keeps_independent_snps_apart",
    "test_reliability.py": {"test_force_never_replaces_a_directory_that_is_not_a_store",
                            "test_a_killed_ingest_leaves_nothing_the_next_one_keeps",
                            "test_a_name_cannot_leave_the_run_directory",
                            "test_a_deleted_or_corrupt_genotype_chunk_is_an_error_naming_it",
                            "test_a_truncated_gzip_is_a_one_line_error", "test_header_columns_are_checked_by_name",
                            "test_a_named_id_column_before_fold_is_read_as_ids",
                            "test_bad_thread_settings_are_said_and_capped", "test_options_that_do_nothing_are_named"},
}
ONLY = {"test_attribution.py", "test_reliability.py"}  # modules where the set names the fast tests instead


def is_fast(item) -> bool:
    path = item.path
    if path.suffix == ".py" and "hpcsnp" in path.parts and "tests" not in path.parts:  # a doctest
        return "cnn" not in path.parts
    listed = FAST_TIER.get(path.name)
    if listed is None:
        return False
    name = item.originalname if hasattr(item, "originalname") else item.name
    listed = {listed} if isinstance(listed, str) else listed
    return (name in listed) if path.name in ONLY else (name not in listed)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if is_fast(item):
            item.add_marker(pytest.mark.fast)


@pytest.fixture
def tsv(tmp_path):
    """Write a small TSV from a string; returns its path."""
    counter = {"n": 0}

    def make(text, name=None, gz=False):
        counter["n"] += 1
        return write_tsv(tmp_path / (name or f"data{counter['n']}.tsv"), text, gz=gz)
    return make


@pytest.fixture(scope="session")
def make_store(tmp_path_factory):
    """A factory of simulated stores, through the public simulator and the TSV ingest, each
    built once per set of parameters for the whole test run: ``make_store(samples=..., ...)``
    returns (store path, the simulator's truth).  A test that changes a store copies it."""
    from hpcsnp.io.simulate import simulate
    from hpcsnp.io.text import ingest_tsv

    built = {}

    def make(samples=240, snps=60, causal=3, folds=3, missing=0.05, seed=1, chunk_rows=64):
        key = (samples, snps, causal, folds, missing, seed, chunk_rows)
        if key not in built:
            d = tmp_path_factory.mktemp("sim")
            truth = simulate(d / "sim.tsv", samples=samples, snps=snps, causal=causal, folds=folds, missing=missing,
                             seed=seed)
            ingest_tsv(d / "sim.tsv", d / "sim.zarr", progress=False, chunk_rows=chunk_rows)
            built[key] = (d / "sim.zarr", truth)
        return built[key]
    return make


@pytest.fixture(scope="session")
def make_run(tmp_path_factory):
    """A factory of trained runs, each trained once per (store, settings, folds) for the whole
    test run, in this process: ``make_run(store, cfg=FAST, folds=(1, 2, 3))`` returns (run
    directory, the folds' FoldResults).  A test that changes a run copies it."""
    trained = {}

    def make(store, cfg=FAST, folds=(1, 2, 3)):
        from hpcsnp.cnn.train import train_fold

        key = (str(store), repr(cfg), tuple(folds))
        if key not in trained:
            run = tmp_path_factory.mktemp("run")
            trained[key] = (run, [train_fold(store, i, run, cfg) for i in folds])
        return trained[key]
    return make


@pytest.fixture(scope="session")
def sim_store(make_store):
    """The small simulated store most tests share: 240 lines x 60 SNPs, 3 folds, 5 % missing."""
    return make_store()


@pytest.fixture(scope="session")
def run(sim_store, make_run):
    """All three folds of the simulated store with the shared short settings (helpers.FAST),
    trained once for the whole test run."""
    return make_run(sim_store[0])
