"""Directories of dstack-ray's state on disk, on the head (the store) and on every node (agents)."""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: Path) -> Path:
    """`path` as a directory only its owner can enter (run specs hold secrets), made if needed."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.chmod(path, 0o700)
    except OSError:
        pass
    return path
