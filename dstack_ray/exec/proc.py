"""The process table from /proc (no psutil), shared by the guard and the node agent.

Standard library only, and not even `typing` (~10 ms to import): the guard imports it and
must start in a few milliseconds.
"""

from __future__ import annotations

import os
import _signal as signal  # `signal` without its enum wrappers (~4 ms to import)
import _thread  # `threading` costs ~3 ms to import; a plain lock is all this needs
import time

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class ProcStat:
    __slots__ = ("parent", "group", "cpu_seconds", "rss_bytes")

    def __init__(self, parent: int, group: int, cpu_seconds: float, rss_bytes: int) -> None:
        self.parent = parent
        self.group = group
        self.cpu_seconds = cpu_seconds  # user + system time so far
        self.rss_bytes = rss_bytes


class _Recent:
    """The last process table read, shared by the threads of one process."""

    lock = _thread.allocate_lock()
    at = float("-inf")
    table: dict[int, ProcStat] = {}


def process_table(max_age: float = 0.0) -> dict[int, ProcStat]:
    """pid -> ProcStat for every live process; with `max_age`, a table read at most that many
    seconds ago may be returned (many jobs sampled on one node share one scan of /proc)."""
    if max_age > 0:
        with _Recent.lock:
            if time.monotonic() - _Recent.at <= max_age:
                return _Recent.table
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
    with _Recent.lock:
        _Recent.at, _Recent.table = time.monotonic(), table
    return table


def sigkill(pids: list[int]) -> None:
    """SIGKILL each of `pids`; one already gone is skipped."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass  # it exited meanwhile


def descendants(root: int, table: dict[int, ProcStat] | None = None) -> list[int]:
    """All live processes below `root`."""
    children: dict[int, list[int]] = {}
    for pid, stat in (process_table() if table is None else table).items():
        children.setdefault(stat.parent, []).append(pid)
    found: list[int] = []
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


def processes_with(entry: bytes) -> list[int]:
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
