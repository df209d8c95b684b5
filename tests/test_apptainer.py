"""The Singularity/Apptainer image on a real SLURM scheduler: slurm/submit.sh with
HPCSNP_IMAGE runs every fold task and the reduce inside the SIF, through to the
reduce's outputs.  Marked `container` and `slurm`.  The SIF is built the way
tools/apptainer-build-local.sh builds it (HPCSNP_SIF names one already built), and
Apptainer runs through tools/apptainer-exec-local.sh where it is not installed.
Skipped, saying why, where neither can run."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import run_cli
from test_slurm import cluster, submit, wait  # noqa: F401 - the cluster fixture, as test_slurm brings it up

pytestmark = [pytest.mark.container, pytest.mark.slurm]
ROOT = Path(__file__).resolve().parents[1]
SHARED_VIA_SID = ROOT.parent / "shared" / "tools" / "apptainer-via-sid.sh"


@pytest.fixture(scope="module")
def sif():
    given = os.environ.get("HPCSNP_SIF")
    if given:
        return Path(given)
    built = ROOT / "apptainer-out" / "hpcsnp.sif"
    sources = [ROOT / "pyproject.toml", ROOT / "Singularity.def", *(ROOT / "hpcsnp").rglob("*.py")]
    stale = built.exists() and built.stat().st_mtime < max(p.stat().st_mtime for p in sources)
    if not built.exists() or stale:  # an image older than the code would test the older code
        if not SHARED_VIA_SID.exists() or os.geteuid() != 0:
            pytest.skip("no image: set HPCSNP_SIF to one built with `apptainer build hpcsnp.sif Singularity.def` "
                        "(building it here needs root and the workplace's apptainer-via-sid.sh)")
        proc = subprocess.run(["bash", str(ROOT / "tools" / "apptainer-build-local.sh"), str(SHARED_VIA_SID)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return built


def runtime() -> str:
    if shutil.which("apptainer"):
        return shutil.which("apptainer")
    if not Path(os.environ.get("SIDROOT", "/var/lib/sid-apptainer"), "usr/bin/apptainer").exists():
        pytest.skip("no apptainer to run the image with (tools/apptainer-exec-local.sh needs the sid root "
                    "that apptainer-via-sid.sh bootstraps)")
    return str(ROOT / "tools" / "apptainer-exec-local.sh")


def test_submit_runs_folds_and_reduce_inside_the_sif(cluster, sif, tmp_path):  # noqa: F811
    data = tmp_path / "data"
    data.mkdir()
    run_cli("simulate", data / "s.tsv", "--samples", 150, "--snps", 40, "--causal", 2, "--folds", 3)
    run_cli("ingest", data / "s.tsv", "-o", data / "s.zarr")
    run = tmp_path / "run"
    run.mkdir()
    for d in (data, run):  # the container runs as an unprivileged user
        d.chmod(0o777)
    array_id, reduce_id = submit(run, data / "s.zarr", env_extra={
        "HPCSNP_IMAGE": str(sif), "HPCSNP_CONTAINER": runtime(), "HPCSNP_BASELINE": "0"})
    states = wait(array_id, timeout=600)
    logs = "".join(p.read_text() for p in (run / "logs").glob("*.log"))
    assert set(states) == {"COMPLETED"}, logs[-3000:]
    assert wait(reduce_id, timeout=300) == ["COMPLETED"], logs[-3000:]
    assert (run / "fold_pcc_summary.csv").exists() and (run / "s" / "fold_3" / "metrics.json").exists()
    command = json.loads((run / "s" / "fold_1" / "metrics.json").read_text())["command"]
    assert command.startswith("/opt/venv/bin/hpcsnp train"), command  # the image's hpcsnp trained it
