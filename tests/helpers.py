"""Helpers shared by the Ray-backed test packages."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, List


def processes_matching(marker: str) -> List[str]:
    """Command lines of live processes containing `marker` (the process-table check)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text()
        except OSError:
            continue
        if marker in cmdline and " Z " not in state:
            found.append(f"{entry.name}: {cmdline}")
    return found


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def no_leftovers(marker: str, timeout: float = 15.0) -> List[str]:
    """Wait until nothing matching `marker` runs; returns what is still there after `timeout`."""
    wait_for(lambda: not processes_matching(marker), timeout)
    return processes_matching(marker)
