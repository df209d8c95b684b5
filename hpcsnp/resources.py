"""What the scheduler granted this process, and capping threads to it.

One small object reads the SLURM_* environment (as submitit does); the
same code runs without a scheduler.  ``cap_threads`` must run before
TensorFlow or a BLAS library is imported: thread pools are sized at import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from hpcsnp.errors import InputError

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "BLIS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
              "TF_NUM_INTEROP_THREADS")


@dataclass(frozen=True)
class Slurm:
    job_id: str | None
    array_job_id: str | None
    array_task_id: int | None
    cpus_per_task: int | None
    restart_count: int

    @classmethod
    def from_env(cls, env=None) -> "Slurm":
        env = os.environ if env is None else env

        def as_int(name):
            value = env.get(name, "")
            return int(value) if value.isdigit() else None

        return cls(job_id=env.get("SLURM_JOB_ID"),
                   array_job_id=env.get("SLURM_ARRAY_JOB_ID"),
                   array_task_id=as_int("SLURM_ARRAY_TASK_ID"),
                   cpus_per_task=as_int("SLURM_CPUS_PER_TASK"),
                   restart_count=as_int("SLURM_RESTART_COUNT") or 0)


def granted_cpus(threads: int | None = None, env=None, warn=None) -> int:
    """Cores this process may use: --threads, else HPCSNP_THREADS, else
    SLURM_CPUS_PER_TASK, else the CPU affinity mask (taskset, cgroup cpusets)
    further limited by a cgroup CPU quota (docker --cpus).  A request above the
    cores available is capped, and a variable that does not parse is ignored;
    both are said once (``warn``, default: a warning on the module's logger)."""
    env = os.environ if env is None else env
    warn = warn or _warn_once
    available = _available_cpus()
    if threads:
        return _capped(int(threads), "--threads", available, warn)
    for name in ("HPCSNP_THREADS", "SLURM_CPUS_PER_TASK"):
        raw = env.get(name, "").strip()
        if not raw:
            continue
        if raw.isdigit() and int(raw) > 0:
            return _capped(int(raw), name, available, warn)
        warn(f"{name}={raw!r} is not a positive integer; ignored")
    return available


def _capped(n: int, source: str, available: int, warn) -> int:
    if n > available:
        warn(f"{source} asks for {n} threads but this process may use {available} core(s); using {available}")
        return available
    return max(1, n)


_WARNED: set = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logging.getLogger(__name__).warning(message)


def _available_cpus() -> int:
    """The CPU affinity mask, further limited by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(n, quota)) if quota else n


def _cgroup_cpu_quota(root="/sys/fs/cgroup") -> int | None:
    """CPUs allowed by a cgroup CPU quota (docker --cpus), None when unlimited:
    cgroup v2 ``cpu.max`` ("150000 100000" -> 2) or v1 ``cpu/cpu.cfs_quota_us``."""
    import math

    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1") or not quota.lstrip("-").isdigit() or not period.isdigit():
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def memory_limit_bytes(env=None, root="/sys/fs/cgroup") -> int | None:
    """Memory this process may use: the smallest of the machine's available memory, a cgroup
    v2 limit (memory.max less what the group uses), and SLURM's grant (SLURM_MEM_PER_NODE,
    or SLURM_MEM_PER_CPU x SLURM_CPUS_PER_TASK, in MB); None when nothing says."""
    env = os.environ if env is None else env
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        top = (Path(root) / "memory.max").read_text().strip()
        if top.isdigit():
            used = (Path(root) / "memory.current").read_text().strip()
            limits.append(int(top) - (int(used) if used.isdigit() else 0))
    except OSError:
        pass
    per_node, per_cpu = env.get("SLURM_MEM_PER_NODE", ""), env.get("SLURM_MEM_PER_CPU", "")
    if per_node.isdigit() and int(per_node) > 0:
        limits.append(int(per_node) << 20)
    elif per_cpu.isdigit() and int(per_cpu) > 0:
        cpus = env.get("SLURM_CPUS_PER_TASK", "1")
        limits.append(int(per_cpu) * (int(cpus) if cpus.isdigit() else 1) << 20)
    return min(limits) if limits else None


def parse_cpu_list(spec: str) -> set[int]:
    """"0,2-3" -> {0, 2, 3} (the kernel's cpulist format).
    >>> sorted(parse_cpu_list("0,2-3"))
    [0, 2, 3]
    """
    cpus = set()
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def pin_from_env(env=None) -> set[int] | None:
    """HPCSNP_CPUS (a cpulist) restricts this process, and every thread it starts later,
    to those CPUs.  `hpcsnp cv` gives each concurrent fold its own cores this way, so two
    single-threaded folds never end up sharing one core while the other idles."""
    spec = (os.environ if env is None else env).get("HPCSNP_CPUS", "").strip()
    if not spec:
        return None
    try:
        cpus = parse_cpu_list(spec)
        os.sched_setaffinity(0, cpus)
    except (AttributeError, OSError, ValueError):  # not Linux, or CPUs not ours: run unpinned
        return None
    return cpus


def cap_threads(threads: int | None = None) -> int:
    """Set every thread-pool size we know of to the granted cores; returns it."""
    n = granted_cpus(threads)
    logging.getLogger(__name__).debug(f"{n} thread(s) for every pool ({', '.join(THREAD_ENV)})")
    for name in THREAD_ENV:
        os.environ[name] = str(n)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return n


def configure_tensorflow(n: int) -> None:
    """Import TensorFlow and apply the cap to its own pools (call once, before any op runs).
    Its start-up lines (oneDNN, CPU features: written by its C++ logging before anything
    can configure it, whatever TF_CPP_MIN_LOG_LEVEL says) and its Python-side warnings
    (e.g. that a fold's several models each traced their attribution function) are kept
    off the user's stderr unless -v asked for debug lines; the start-up lines are shown
    when the import fails."""
    debug = logging.getLogger("hpcsnp").isEnabledFor(logging.DEBUG)
    with native_stderr_captured(replay=debug) as captured:
        try:
            import tensorflow as tf
        except BaseException:
            captured.replay = True
            raise
    if not debug:
        tf.get_logger().setLevel(logging.ERROR)

    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(min(n, 2))
    except RuntimeError:  # already initialised in this process (tests); keep what is set
        pass
    with native_stderr_captured(replay=debug):
        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:  # take GPU memory as needed: several folds' processes may share a device
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # already initialised
                pass
        tf.constant(0)  # the runtime starts here, with its own round of start-up lines
    _DEVICE[0] = _device_name(tf, gpus)
    logging.getLogger(__name__).log(logging.INFO if gpus else logging.DEBUG, f"TensorFlow runs on {_DEVICE[0]}")


_DEVICE = ["CPU"]  # where TensorFlow runs this process's models, once configure_tensorflow has run


def _device_name(tf, gpus) -> str:
    if not gpus:
        return "CPU"
    try:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "")
    except (RuntimeError, ValueError):
        name = ""
    return f"GPU ({len(gpus)} visible{': ' + name if name else ''})"


def tensorflow_device() -> str:
    """"CPU", or "GPU (k visible: name)" when TensorFlow saw a GPU (the [gpu] install, a CUDA
    driver): TensorFlow then places the models' operations on the first one by itself."""
    return _DEVICE[0]


class native_stderr_captured:
    """File descriptor 2 (where C and C++ libraries write, below Python's sys.stderr) sent to
    a temporary file for the block; written to the real stderr afterwards when ``replay``
    is true (set it inside the block, e.g. when something failed)."""

    def __init__(self, replay: bool = False):
        self.replay = replay

    def __enter__(self):
        import tempfile

        sys.stderr.flush()
        self.file = tempfile.TemporaryFile()
        self.saved = os.dup(2)
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        if self.replay:
            self.file.seek(0)
            sys.stderr.write(self.file.read().decode(errors="replace"))
        self.file.close()
        return False


def native_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 in hardware (x86 AVX512-BF16 or AMX-BF16: Intel
    Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later); elsewhere TensorFlow emulates
    it and a bfloat16 step is slower than float32.

    >>> native_bfloat16("flags : fpu avx512f avx512_bf16"), native_bfloat16("flags : fpu avx2"), native_bfloat16("")
    (True, False, False)
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def provenance() -> dict:
    """Where and with what a step ran; goes into every output's metadata."""
    import platform
    import sys
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for pkg in ("hpcsnp", "numpy", "zarr", "tensorflow", "tensorflow-cpu", "keras",
                "dask", "pandas"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    slurm = Slurm.from_env()
    return {"versions": versions, "host": socket.gethostname(),
            "command": " ".join(sys.argv),
            "slurm_job_id": slurm.job_id, "slurm_array_task_id": slurm.array_task_id,
            "slurm_restart_count": slurm.restart_count}


def die_with_parent() -> None:
    """In a fold process started by cv: be SIGTERMed when cv dies (Linux prctl), and exit at
    once if cv is already gone."""
    parent = os.environ.pop("HPCSNP_PARENT_PID", "")  # not inherited by anything we start
    if not parent.isdigit():
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):
        raise SystemExit(143)


def keep_freed_memory(need: int, available: int | None = None) -> bool:
    """Let malloc serve large arrays from its heap and keep what is freed for the next ones
    (glibc's mallopt: M_MMAP_MAX 0, M_TRIM_THRESHOLD at its largest), where the memory this
    process may use (``available``, default ``memory_limit_bytes``) holds twice ``need``, its
    expected peak.  Otherwise every array over 32 MB is a fresh mapping whose pages are
    faulted in again: the exact baselines make and drop n x n arrays dozens of times a fold,
    and on SoyNAM a fold's four took 15-20 % less time this way (bench/RESULTS.md).  The
    price: the process keeps its peak memory until it exits, and the heap's fragments can
    raise that peak (by 13-30 % there), hence the headroom asked for: where SLURM grants
    less, nothing changes.  True when set; False elsewhere
    (not glibc, or too little memory)."""
    available = memory_limit_bytes() if available is None else available
    if available is not None and available < 2 * need:
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def rss_mb(field: str = "VmHWM") -> float:
    """Resident memory of this process from /proc (VmRSS now, VmHWM peak); nan elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float | None:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except ImportError:
        return None


@contextlib.contextmanager
def one_blas_thread_per_task():
    """While Dask runs its blocks on several local threads, each block's BLAS call on one
    thread: with the pool sized to the granted cores as well, two workers' matrix products
    would run on twice the cores (a pass over 100,000 x 50,000 took 23 s instead of 17)."""
    import dask
    from threadpoolctl import threadpool_limits

    local = dask.config.get("scheduler", "threads") in ("threads", "threading")
    if not local or dask.config.get("num_workers", None) == 1:
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


BLAS_PLUGIN = "hpcsnp-one-blas-thread"


def one_blas_thread_plugin():
    """A distributed worker plugin: the worker process's BLAS on one thread while hpcsnp's
    graphs run there, as one_blas_thread_per_task gives the local threads.  A worker runs its
    tasks side by side on its threads and inherits the client's caps (OPENBLAS_NUM_THREADS =
    the granted cores); two one-thread workers on 2 cores then ran 4 BLAS threads and a pass
    over 100,000 x 50,000 took 41 s instead of 29.  The limit is set from the worker's event
    loop, the process's main thread (OpenBLAS ignores a limit set from a task's thread), and
    lifted when the plugin is removed.  (A class made here: distributed is optional.)"""
    from distributed import WorkerPlugin

    class OneBlasThread(WorkerPlugin):
        def setup(self, worker):
            from threadpoolctl import threadpool_limits

            self.limits = threadpool_limits(1, user_api="blas")

        def teardown(self, worker):
            self.limits.restore_original_limits()

    return OneBlasThread()


@contextlib.contextmanager
def one_blas_thread_per_worker(client):
    """While ``client``'s graphs run: every worker's BLAS on one thread (one_blas_thread_plugin)."""
    client.register_plugin(one_blas_thread_plugin(), name=BLAS_PLUGIN)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):  # the workers may be gone already (a cluster shutting down)
            client.unregister_worker_plugin(BLAS_PLUGIN)


@contextlib.contextmanager
def dask_context(scheduler: str = "threads", threads: int | None = None):
    """Run Dask graphs (the reduction's, the scalable linear models') on local threads (default),
    processes, synchronously, on a distributed scheduler given by address (a dask-jobqueue
    SLURMCluster's, say), or on worker jobs it submits to SLURM (``slurm:N``, hpcsnp/jobqueue.py)."""
    import dask

    from hpcsnp.jobqueue import parse_slurm_scheduler, slurm_client

    jobs = parse_slurm_scheduler(scheduler)
    if jobs is not None:  # worker jobs on SLURM, started and ended here (dask-jobqueue)
        with slurm_client(jobs) as client, one_blas_thread_per_worker(client):
            yield client
        return
    if "://" in scheduler or scheduler.endswith(".json"):
        try:
            from distributed import Client
        except ImportError:
            raise InputError("--scheduler with an address needs dask.distributed "
                             "(pip install 'dask[distributed]')") from None
        if threads:
            logging.getLogger(__name__).warning("--threads ignored with a distributed scheduler (its workers "
                                                "have their own)")
        kw = {"scheduler_file": scheduler} if scheduler.endswith(".json") else {"address": scheduler}
        with Client(**kw, timeout="60s") as client, one_blas_thread_per_worker(client):
            yield client
        return
    if scheduler not in ("threads", "processes", "synchronous"):
        raise InputError(f"unknown Dask scheduler {scheduler!r}: threads, processes, synchronous, slurm:N or an "
                         "address")

    with dask.config.set(scheduler=scheduler, num_workers=granted_cpus(threads)):
        yield None


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb"  # glibc 2.35 and later
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
RESTARTED = "HPCSNP_RESTARTED"  # set in the restarted process: never a second restart


def huge_pages_env(env=None, thp_setting: Path = THP_SETTING) -> dict | None:
    """The environment under which glibc's malloc asks the kernel for transparent huge pages
    (GLIBC_TUNABLES glibc.malloc.hugetlb=1: madvise(MADV_HUGEPAGE) on the memory it maps), or
    None where it does not apply: not glibc 2.35 or later, the kernel's huge pages off
    ("[never]"), the tunable given already (GLIBC_TUNABLES=glibc.malloc.hugetlb=0 keeps them
    off), or this process the restarted one.  A training step streams activations of several
    MB each, which TensorFlow takes from malloc; on 4 kB pages a pass over one walks ~1,300
    pages' translations.  glibc reads its tunables when a process starts, so ``cli.main``
    starts itself again under this environment (``exec_with_huge_pages``)."""
    import platform

    env = dict(os.environ if env is None else env)
    tunables = env.get("GLIBC_TUNABLES", "")
    if HUGE_PAGES_TUNABLE in tunables or env.get(RESTARTED):  # the restarted process, and cv's folds
        return None
    libc, version = platform.libc_ver()
    try:
        recent = tuple(int(p) for p in version.split(".")[:2]) >= (2, 35)
    except ValueError:
        recent = False
    if libc != "glibc" or not recent:
        return None
    try:
        setting = thp_setting.read_text()
    except OSError:
        return None
    if "[always]" not in setting and "[madvise]" not in setting:
        return None
    env["GLIBC_TUNABLES"] = ":".join(t for t in (tunables, f"{HUGE_PAGES_TUNABLE}=1") if t)
    env[RESTARTED] = "1"
    return env


def started_as_hpcsnp(argv0: str | None = None) -> bool:
    """Whether this interpreter runs the ``hpcsnp`` command itself: its console script or
    ``python -m hpcsnp`` (not a script, ``python -c``, stdin or a notebook calling main())."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    path = Path(argv0)
    return path.name == "hpcsnp" or path.parts[-2:] == ("hpcsnp", "__main__.py")


def exec_with_huge_pages() -> None:
    """Replace this process by itself under ``huge_pages_env`` (same pid, command line and open
    files), before TensorFlow, numpy or any data is loaded; only the ``hpcsnp`` command itself
    (``started_as_hpcsnp``), once; nothing happens where it does not apply or the exec fails."""
    if not started_as_hpcsnp() or not getattr(sys, "orig_argv", None) or not sys.executable:
        return
    env = huge_pages_env()  # reads the kernel's setting: only for the command itself
    if env is None:
        return
    with contextlib.suppress(OSError):
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
