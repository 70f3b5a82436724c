"""The process table from /proc (no psutil), shared by the guard and the node agent.

Standard library only: the guard imports it and must start in a few tens of milliseconds.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Dict, List, NamedTuple, Optional

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class ProcStat(NamedTuple):
    parent: int
    group: int
    cpu_seconds: float  # user + system time so far
    rss_bytes: int


_recent: Dict[str, object] = {"at": float("-inf"), "table": {}}
_recent_lock = threading.Lock()


def process_table(max_age: float = 0.0) -> Dict[int, ProcStat]:
    """pid -> ProcStat for every live process; with `max_age`, a table read at most that many
    seconds ago may be returned (many jobs sampled on one node share one scan of /proc)."""
    if max_age > 0:
        with _recent_lock:
            if time.monotonic() - _recent["at"] <= max_age:  # type: ignore[operator]
                return _recent["table"]  # type: ignore[return-value]
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: parse after the last ')'.
        # Fields from there: state, ppid, pgrp, ..., utime (11), stime (12), ..., rss (21).
        fields = stat[stat.rfind(b")") + 2 :].split()
        table[int(entry)] = ProcStat(
            int(fields[1]), int(fields[2]), (int(fields[11]) + int(fields[12])) / _TICKS, int(fields[21]) * _PAGE
        )
    with _recent_lock:
        _recent.update(at=time.monotonic(), table=table)
    return table


def descendants(root: int, table: Optional[Dict[int, ProcStat]] = None) -> List[int]:
    """All live processes below `root`."""
    children: Dict[int, List[int]] = {}
    for pid, stat in (process_table() if table is None else table).items():
        children.setdefault(stat.parent, []).append(pid)
    found: List[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def tree_usage(root: int, max_age: float = 0.0) -> tuple[float, int]:
    """CPU seconds used so far and resident bytes of `root` and every process below it (from a
    process table at most `max_age` seconds old)."""
    table = process_table(max_age)
    members = [pid for pid in [root, *descendants(root, table)] if pid in table]
    return sum(table[p].cpu_seconds for p in members), sum(table[p].rss_bytes for p in members)


def processes_with(entry: bytes) -> List[int]:
    """PIDs of live processes whose environment holds `entry` (`NAME=value`) exactly."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if entry in environ.split(b"\0"):
            found.append(int(pid))
    return found
