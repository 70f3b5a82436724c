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
