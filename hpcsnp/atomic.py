"""Files and directories that appear whole or not at all.

Everything hpcsnp writes is written under a temporary name next to its final
place and renamed into it (a rename within a file system is atomic), so a job
killed at any moment never leaves something that looks finished.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


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
