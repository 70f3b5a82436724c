"""Append-only log files, one per run attempt and rank, on the head node.

Each line is `<RFC 3339 UTC timestamp> <text>\\n`, written by the NodeAgent. Appends carry the
byte offset they start at, so a retried append (after a Controller restart) is written once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

from dstack_ray.paths import private_dir


class LogGap(Exception):
    """An append starts beyond the end of the file: an earlier chunk is missing."""


class LogStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        private_dir(root)

    def path(self, run_id: str, attempt: int, rank: int) -> Path:
        return self.root / run_id / f"attempt-{attempt}" / f"rank-{rank}.log"

    def size(self, run_id: str, attempt: int, rank: int) -> int:
        try:
            return self.path(run_id, attempt, rank).stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, run_id: str, attempt: int, rank: int, offset: int, data: bytes) -> int:
        """Write `data` that starts at byte `offset`; skip what is already there. Returns the size."""
        path = self.path(run_id, attempt, rank)
        if not path.parent.is_dir():
            private_dir(path.parent.parent)
            private_dir(path.parent)
        # Only the owner may read a run's output (it may print its secrets).
        with open(path, "ab", buffering=0, opener=lambda name, flags: os.open(name, flags, 0o600)) as f:
            size = f.seek(0, os.SEEK_END)
            if offset > size:
                raise LogGap(f"{path}: append at {offset} but the file has {size} bytes")
            skip = size - offset
            if skip < len(data):
                chunk = memoryview(data)[skip:]
                try:
                    while chunk:
                        chunk = chunk[f.write(chunk) or 0 :]
                except OSError:
                    # A full disk: leave no half chunk, so a later append at `offset` fits.
                    f.truncate(size)
                    raise
            return max(size, offset + len(data))

    def read(self, run_id: str, attempt: int, rank: int, offset: int, limit: int) -> Tuple[bytes, int]:
        """Up to `limit` bytes from `offset`, cut at the last complete line."""
        path = self.path(run_id, attempt, rank)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(limit)
        except FileNotFoundError:
            return b"", offset
        if len(data) == limit:
            cut = data.rfind(b"\n")
            if cut >= 0:
                data = data[: cut + 1]
        return data, offset + len(data)

    def delete_run(self, run_id: str) -> None:
        base = self.root / run_id
        if not base.exists():
            return
        for dirpath, dirnames, filenames in os.walk(base, topdown=False):
            for name in filenames:
                os.unlink(os.path.join(dirpath, name))
            os.rmdir(dirpath)
