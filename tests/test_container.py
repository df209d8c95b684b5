"""The Docker image runs the pipeline as `docker run -v $PWD:/data IMAGE ...`.
Marked `container` (builds an image: minutes).  Skipped unless docker works here and
the base image is present: tools/docker-base.sh prepares both (CI runs it first);
HPCSNP_DOCKER_BASE names another base image (e.g. python:3.11-slim where Docker Hub
is reachable)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.container
ROOT = Path(__file__).resolve().parents[1]
IMAGE = "hpcsnp:test"


@pytest.fixture(scope="module")
def image():
    base = os.environ.get("HPCSNP_DOCKER_BASE", "hpcsnp-base:bookworm")
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode:
        pytest.skip("docker is not usable here (tools/docker-base.sh sets it up)")
    if subprocess.run(["docker", "image", "inspect", base], capture_output=True).returncode:
        pytest.skip(f"no base image {base} (tools/docker-base.sh builds one from the Debian archive)")
    proc = subprocess.run(["docker", "build", "-q", "--build-arg", f"BASE={base}", "-t", IMAGE, str(ROOT)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return IMAGE


def docker(data, *args, cpus=None):
    cmd = ["docker", "run", "--rm", "-v", f"{data}:/data"] + (["--cpus", str(cpus)] if cpus else [])
    return subprocess.run(cmd + [IMAGE, *map(str, args)], capture_output=True, text=True, check=True)


def test_image_runs_the_pipeline_as_non_root(image, tmp_path):
    tmp_path.chmod(0o777)
    docker(tmp_path, "simulate", "s.tsv", "--samples", 150, "--snps", 40, "--folds", 3)
    docker(tmp_path, "ingest", "s.tsv")
    docker(tmp_path, "cv", "s.zarr", "--run", "run", "--epochs", 2, "--batch-size", 16, cpus=1)
    assert (tmp_path / "run" / "fold_pcc_summary.csv").exists()
    m = json.loads((tmp_path / "run" / "s" / "fold_1" / "metrics.json").read_text())
    assert m["threads"] == 1  # from the container's CPU quota
    assert (tmp_path / "run" / "s" / "fold_1").stat().st_uid == 1000  # written by the image's user
    user = subprocess.run(["docker", "image", "inspect", "-f", "{{.Config.User}}", IMAGE],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert user == "1000:1000"  # the image's non-root user, numeric so hosts resolve it
