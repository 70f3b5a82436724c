"""The node agent's echo of a job's output to its Ray log: every line while the output is
modest, thinned with a note when it floods (the stored log keeps every line)."""

from __future__ import annotations

from dstack_ray.exec.records import LineEcho, format_records
from dstack_ray.runtime.agent import SpoolShipper


def echoing(rate: int, burst: int) -> SpoolShipper:
    shipper = object.__new__(SpoolShipper)  # only the echo's state: no job, no thread
    shipper.ECHO_RATE, shipper.ECHO_BURST = rate, burst
    shipper._prefix = b"[run:0] "
    shipper._echo = LineEcho()
    shipper._tokens, shipper._tokens_at, shipper._skipped = float(burst), 0.0, 0
    return shipper


def test_modest_output_is_echoed_line_by_line(capsysbinary, monkeypatch):
    monkeypatch.setattr("dstack_ray.runtime.agent.time.monotonic", lambda: 0.0)
    shipper = echoing(rate=1000, burst=10_000)
    shipper._echo_lines(format_records(b"one\ntwo\n"))
    assert capsysbinary.readouterr().out == b"[run:0] one\n[run:0] two\n"


def test_a_flood_is_thinned_with_a_note(capsysbinary, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("dstack_ray.runtime.agent.time.monotonic", lambda: clock[0])
    shipper = echoing(rate=1000, burst=2000)
    big = format_records(b"x" * 1500 + b"\n")
    shipper._echo_lines(big)  # within the burst
    shipper._echo_lines(big)  # over it: left out
    shipper._echo_lines(format_records(b"p" * 600))  # a piece of a line, left out too
    clock[0] = 5.0  # the bucket refilled
    shipper._echo_lines(format_records(b"after\n"))
    out = capsysbinary.readouterr().out.split(b"\n")
    assert out[0] == b"[run:0] " + b"x" * 1500
    assert out[1].startswith(b"[run:0] (") and b"bytes of output not shown here" in out[1] and b"dstack-ray logs" in out[1]
    assert out[2] == b"[run:0] after"  # not joined with the skipped piece


def test_records_made_in_one_pass_equal_records_made_line_by_line(monkeypatch):
    """The guard stamps a chunk without `\\r` in one `replace`; any chunk must give exactly
    the records of the line-by-line way (a trailing `\\r` dropped, an unfinished tail partial)."""
    import random

    from dstack_ray.exec import records

    stamp = b"2026-01-01T00:00:00.000000Z"
    monkeypatch.setattr(records, "timestamp", lambda: stamp)

    def line_by_line(chunk: bytes) -> bytes:
        lines = chunk.split(b"\n")
        tail = lines.pop()
        out = b"".join(stamp + b" " + line.rstrip(b"\r") + b"\n" for line in lines)
        return out + (stamp + b"\t" + tail + b"\n" if tail else b"")

    rng = random.Random(7)
    chunks = [b"", b"\n", b"a\n", b"a", b"a\r\n", b"\r\r\n", b"x\ny\nz"]
    chunks += [bytes(rng.choice(b"ab \t\r\n") for _ in range(rng.randint(0, 40))) for _ in range(2000)]
    for chunk in chunks:
        assert records.format_records(chunk) == line_by_line(chunk), chunk
