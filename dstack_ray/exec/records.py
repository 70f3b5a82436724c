"""The log record format: written by the guard into the job's output file on the node, shipped
and stored on the head byte for byte, parsed by readers (`parse_records`, below).

- a complete line: `<RFC 3339 UTC timestamp> <text>\\n` (a trailing `\\r` dropped);
- a piece of a line still being written: `<timestamp>\\t<bytes>\\n`, sent at once so that `\\r`
  redraws (progress bars) show live; readers join the pieces with the rest of the line.

Imports nothing heavy (not even `datetime`, which the readers import when they parse): the
guard uses it.
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


# -- reading records (clients: `Run.logs`) ---------------------------------------------------


class LogLine(str):
    """A line of a run's output; `.time` is when the node agent read it, `.rank` its node.
    `.partial`: only when asked for (`logs(..., partial=True)`), a piece of a line that is still
    being written (no newline yet; it may hold `\\r` redraws)."""

    time: datetime
    rank: int
    partial: bool = False  # set on the (few) partial records only

    def __new__(cls, text: str, time: datetime, rank: int, partial: bool = False) -> "LogLine":
        line = super().__new__(cls, text)
        line.time = time
        line.rank = rank
        if partial:
            line.partial = True
        return line


_STAMP = len("2026-01-01T00:00:00.000000Z")  # the guard's timestamps have this fixed width


def parse_records(data: bytes, rank: int) -> List[LogLine]:
    """Stored records -> LogLines: `<timestamp> <text>` is a line (or the end of one), and
    `<timestamp>\\t<text>` a partial record, more of the same line follows. Records read together
    share a timestamp, so each distinct one is parsed once; the chunk is decoded at once (a
    newline byte is never inside a UTF-8 character, so this equals decoding line by line).
    Per record this is the hot loop of `logs` (a million lines a few seconds): the usual record
    (the last timestamp again, then a space) takes the short way."""
    from datetime import datetime, timezone  # here: the guard imports this module too

    lines: List[LogLine] = []
    append = lines.append
    new_line = str.__new__  # LogLine without its __new__: the attributes are set right here
    last_stamp, last_time = "", datetime.now(timezone.utc)
    for raw in data.decode("utf-8", errors="replace").split("\n")[:-1]:
        if last_stamp and raw.startswith(last_stamp) and raw[_STAMP : _STAMP + 1] == " ":
            line = new_line(LogLine, raw[_STAMP + 1 :])
            line.time, line.rank = last_time, rank
            append(line)
            continue
        if len(raw) > _STAMP and raw[_STAMP - 1] == "Z" and raw[_STAMP] in " \t":
            cut = _STAMP
        else:  # not the usual width: find the separator
            space, tab = raw.find(" "), raw.find("\t")
            cut = min(i for i in (space, tab, len(raw)) if i >= 0)
        stamp, partial, text = raw[:cut], cut < len(raw) and raw[cut] == "\t", raw[cut + 1 :]
        if stamp != last_stamp:
            try:
                last_time = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            except ValueError:
                stamp, text, partial = "", raw, False
            last_stamp = stamp if len(stamp) == _STAMP else ""
        append(LogLine(text, last_time, rank, partial))
    return lines


PARSE_PIECE = 256 * 1024  # bytes of records parsed at a time: what a reader holds as LogLines


def pieces(data: bytes, size: int = PARSE_PIECE) -> Iterator[bytes]:
    """`data` (whole records) in slices of about `size` bytes, each ending with a record."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", min(start + size, len(data)) - 1) + 1 or len(data)
        yield data[start:end]
        start = end


class LineJoiner:
    """Joins partial records with the record that completes them (the line view)."""

    def __init__(self) -> None:
        self.pending: Optional[LogLine] = None

    def feed(self, line: LogLine) -> Optional[LogLine]:
        if self.pending is not None:
            line = LogLine(self.pending + line, self.pending.time, line.rank, line.partial)
            self.pending = None
        if line.partial:
            self.pending = line
            return None
        if not line.endswith("\r"):
            return line
        return LogLine(line.rstrip("\r"), line.time, line.rank)

    def flush(self) -> Optional[LogLine]:
        """A line the command never ended with a newline (its last)."""
        line, self.pending = self.pending, None
        return LogLine(line.rstrip("\r"), line.time, line.rank) if line is not None else None
