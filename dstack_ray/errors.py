"""Errors of the public API that a user can act on (the CLI prints them as one line)."""

from typing import Optional


class DstackRayError(Exception):
    """Run not found, cluster unreachable, run still active...; `hint` says what to do."""

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.hint = hint
