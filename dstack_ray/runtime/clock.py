"""The time the Controller and Supervisors schedule by: UTC now, plus an optional offset read
from a file (`clock_offset_file` in the settings) so tests can move time forward."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional


class Clock:
    def __init__(self, offset_file: Optional[str] = None) -> None:
        self._offset_file = Path(offset_file) if offset_file else None

    def offset(self) -> float:
        if self._offset_file is None:
            return 0.0
        try:
            return float(self._offset_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0.0

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + timedelta(seconds=self.offset())
