"""The log record format: written by the guard into the job's output file on the node, shipped
and stored on the head byte for byte, parsed by readers (`dstack_ray.api._parse_log`).

- a complete line: `<RFC 3339 UTC timestamp> <text>\\n` (a trailing `\\r` dropped);
- a piece of a line still being written: `<timestamp>\\t<bytes>\\n`, sent at once so that `\\r`
  redraws (progress bars) show live; readers join the pieces with the rest of the line.

Imports nothing heavy (not even `datetime`): the guard uses it.
"""

from __future__ import annotations

import time


def timestamp() -> bytes:
    now = time.time()
    seconds = int(now)
    return b"%s.%06dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)).encode(), int((now - seconds) * 1e6))


def format_records(chunk: bytes) -> bytes:
    """The records for one chunk of a command's output."""
    stamp = timestamp()
    end = chunk.rfind(b"\n") + 1
    lines, tail = chunk[:end], chunk[end:]
    if b"\r" not in lines:  # the usual case, in one pass in C: a stamp after every newline
        formatted = stamp + b" " + lines.replace(b"\n", b"\n" + stamp + b" ")[: -len(stamp) - 1] if lines else b""
    else:
        formatted = b"".join(stamp + b" " + line.rstrip(b"\r") + b"\n" for line in lines.split(b"\n")[:-1])
    if tail:
        formatted += stamp + b"\t" + tail + b"\n"
    return formatted


class LineEcho:
    """Complete lines from records (pieces joined), for a console such as the Ray dashboard's
    log of the node agent."""

    MAX_PIECE = 64 * 1024

    def __init__(self) -> None:
        self._piece = b""

    def lines(self, records: bytes) -> list[bytes]:
        out = []
        for record in records.split(b"\n"):
            if len(record) < 2:
                continue
            space, tab = record.find(b" ", 0, 40), record.find(b"\t", 0, 40)
            if tab > 0 and (space < 0 or tab < space):
                self._piece += record[tab + 1 :]
                if len(self._piece) > self.MAX_PIECE:
                    out.append(self._piece)
                    self._piece = b""
            elif space > 0:
                out.append(self._piece + record[space + 1 :])
                self._piece = b""
        return out
