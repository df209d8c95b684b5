"""The Docker image runs the pipeline as `docker run -v $PWD:/data IMAGE ...`.
Marked `container` (builds an image: minutes); run with `python -m pytest -m container`.
tools/docker-base.sh prepares dockerd and a base image where Docker Hub is unreachable."""

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
    if shutil.which("docker") is None and os.geteuid() != 0:
        pytest.skip("no docker")
    subprocess.run([str(ROOT / "tools" / "docker-base.sh")], check=True)
    subprocess.run(["docker", "build", "-q", "--build-arg", "BASE=hpcsnp-base:bookworm", "-t", IMAGE,
                    str(ROOT)], check=True, capture_output=True)
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
