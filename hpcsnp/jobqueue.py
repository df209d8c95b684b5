"""Dask workers as SLURM jobs (dask-jobqueue), for ``--scheduler slurm[:N]``.

The scalable linear models and the reduction run their blocked work as Dask graphs; by
default on local threads.  ``--scheduler slurm:N`` starts a scheduler in this process and
N worker jobs through ``sbatch`` (dask_jobqueue.SLURMCluster), each one Dask worker with
``HPCSNP_DASK_CORES`` cores [2] and ``HPCSNP_DASK_MEM`` memory [4GB] for at most
``HPCSNP_DASK_TIME`` [01:00:00], plus any ``HPCSNP_DASK_SBATCH_ARGS`` (partition, account);
their logs go to ``HPCSNP_DASK_LOGS`` [a temporary directory].  The graphs sum their blocks
in a fixed tree, so the results do not depend on how many workers ran them.  The jobs end
with the command.  Needs ``pip install 'hpcsnp[distributed]'`` (dask-jobqueue).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
import tempfile

from hpcsnp.errors import InputError

logger = logging.getLogger(__name__)
WAIT_SECONDS = 600  # for the worker jobs to start (they queue like any job)


def parse_slurm_scheduler(scheduler: str) -> int | None:
    """The number of worker jobs of ``slurm`` / ``slurm:N``, None for any other scheduler.

    >>> parse_slurm_scheduler("slurm"), parse_slurm_scheduler("slurm:3"), parse_slurm_scheduler("threads")
    (1, 3, None)
    """
    if scheduler != "slurm" and not scheduler.startswith("slurm:"):
        return None
    n = scheduler.partition(":")[2] or "1"
    if not n.isdigit() or int(n) < 1:
        raise InputError(f"--scheduler {scheduler}: slurm:N with N a number of worker jobs (slurm:2)")
    return int(n)


@contextlib.contextmanager
def slurm_client(jobs: int):
    """A dask.distributed Client whose workers are ``jobs`` SLURM jobs (see the module's notes)."""
    try:
        from dask_jobqueue import SLURMCluster
        from distributed import Client
    except ImportError:
        raise InputError("--scheduler slurm needs dask-jobqueue: pip install 'hpcsnp[distributed]'") from None
    env = os.environ
    logs = env.get("HPCSNP_DASK_LOGS") or tempfile.mkdtemp(prefix="hpcsnp-dask-")
    cluster = SLURMCluster(cores=int(env.get("HPCSNP_DASK_CORES", "2")), processes=1,
                           memory=env.get("HPCSNP_DASK_MEM", "4GB"), walltime=env.get("HPCSNP_DASK_TIME", "01:00:00"),
                           job_extra_directives=shlex.split(env.get("HPCSNP_DASK_SBATCH_ARGS", "")),
                           python=sys.executable, log_directory=logs, job_name="hpcsnp-dask")
    try:
        cluster.scale(jobs=jobs)
        with Client(cluster) as client:
            try:
                client.wait_for_workers(jobs, timeout=WAIT_SECONDS)
            except TimeoutError:
                raise InputError(f"--scheduler slurm:{jobs}: the worker jobs did not start within {WAIT_SECONDS} s "
                                 f"(squeue shows why; their logs: {logs})") from None
            ids = sorted({str(w.job_id) for w in cluster.workers.values() if getattr(w, "job_id", None)})
            logger.info(f"Dask: {jobs} worker job(s) on SLURM ({', '.join(ids)}); logs in {logs}")
            yield client
    finally:
        cluster.close()
