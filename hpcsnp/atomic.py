"""Files and directories that appear whole or not at all.

Everything hpcsnp writes is written under a temporary name next to its final
place and renamed into it (a rename within a file system is atomic), so a job
killed at any moment never leaves something that looks finished.
"""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

from hpcsnp.errors import InputError


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tmp_pid(path: Path, final: Path) -> int | None:
    """The process id in ``path`` when it is a temporary name of ``final`` (``NAME.tmp-PID``,
    possibly followed by ``-SUFFIX``), else None.

    >>> tmp_pid(Path("out.csv.tmp-42"), Path("out.csv")), tmp_pid(Path("out.csv.old"), Path("out.csv"))
    (42, None)
    """
    prefix = f"{Path(final).name}.tmp-"
    name = Path(path).name
    if not name.startswith(prefix):
        return None
    pid = name[len(prefix):].split("-")[0]
    return int(pid) if pid.isdigit() else None


def remove_stale_files(final) -> list[Path]:
    """Delete the temporary files (``NAME.tmp-PID``) of ``final`` whose process is gone, as a
    process killed by SIGKILL or a node failure leaves them; returns what was removed.  Only
    plain files: temporary stores are ``store.remove_stale_temporaries``'s."""
    final = Path(final)
    removed = []
    for p in final.parent.glob(f"{glob.escape(final.name)}.tmp-*"):
        pid = tmp_pid(p, final)
        if pid is not None and not pid_alive(pid) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def check_writable(path, *, directory: bool = False) -> None:
    """Refuse, before any work, an output that could not be written: a file whose folder is
    missing, is not a folder or is read-only, a file path that is a folder; for a
    ``directory`` output (created when absent), its nearest existing ancestor must be a
    writable folder."""

    path = Path(path)
    if directory:
        if path.exists() and not path.is_dir():
            raise InputError(f"{path} is a file; give a directory")
        probe = path
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise InputError(f"{path} cannot be created: {probe} is a file, not a directory")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise InputError(f"{path} cannot be written: {probe} is not writable")
        return
    if path.is_dir():
        raise InputError(f"{path} is a directory; give a file name")
    parent = path.parent
    if not parent.exists():
        raise InputError(f"{path} cannot be written: the directory {parent} does not exist")
    if not parent.is_dir():
        raise InputError(f"{path} cannot be written: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"{path} cannot be written: {parent} is not writable (read-only or not yours)")


def tmp_name(path: Path) -> Path:
    """``NAME.tmp-<pid>`` next to ``path``: a process's own temporary name for it."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def atomic_write_text(path, text: str) -> None:
    path = Path(path)
    tmp = tmp_name(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished directory into place; an old one is removed first."""
    if final.exists():
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
