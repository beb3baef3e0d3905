"""Whether the process of a job run still exists on this host (Linux and POSIX)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["process_exists", "process_start_ticks"]


def process_exists(pid: int) -> bool:
    try:
        # Signal 0 checks that the process exists without sending anything.
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start_ticks(pid: int) -> int | None:
    """Return a process's start time in clock ticks since boot (Linux), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 follows the command name, which may itself contain spaces or ")".
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None
