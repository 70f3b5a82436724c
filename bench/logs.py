"""Logs: a task writing 100 MB of lines, until the client has every byte; against the same
command writing to a local file, and through a bare terminal (`script`, a pty read by a C
program: what any terminal-attached output costs here, the floor for a command on a pty as
dstack's runner and ours run it). Verifies that nothing is missing or reordered.

    python bench/logs.py [--megabytes 100]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time

from common import client, report, start_local_ray, task

LINE = 100  # bytes per line, newline included


def writer(lines: int) -> str:
    return (
        "python3 -c \"import sys\n"
        f"w = sys.stdout.write\nfor i in range({lines}): w('%010d ' % i + 'x' * {LINE - 12} + '\\\\n')\""
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args()
    lines = args.megabytes * 1_000_000 // LINE
    command = writer(lines)
    with tempfile.NamedTemporaryFile() as out:
        started = time.perf_counter()
        subprocess.run(["bash", "-c", command], stdout=out, check=True)
        local = time.perf_counter() - started
    pty = None
    if shutil.which("script"):
        started = time.perf_counter()
        subprocess.run(["script", "-q", "-c", command, "/dev/null"], stdout=subprocess.DEVNULL, check=True)
        pty = time.perf_counter() - started
    start_local_ray(num_cpus=2)
    c = client()
    started = time.perf_counter()
    run = c.apply(task("logs-100mb", [command]))
    count, in_order, size = 0, True, 0
    for line in run.logs(follow=True):
        if int(line[:10]) != count:
            in_order = False
        count += 1
        size += len(line) + 1
    elapsed = time.perf_counter() - started
    run.wait(60)
    figures = {
        "megabytes": args.megabytes,
        "lines_expected": lines,
        "lines_received": count,
        "bytes_received": size,
        "complete_and_in_order": in_order and count == lines,
        "dstack_ray_seconds": round(elapsed, 2),
        "local_file_seconds": round(local, 2),
        "ratio_vs_local_file": round(elapsed / local, 2),
        "bare_pty_seconds": round(pty, 2) if pty else None,
        "ratio_vs_bare_pty": round(elapsed / pty, 2) if pty else None,
        "dstack_ray_mb_per_second": round(args.megabytes / elapsed, 1),
    }
    report("logs", figures)


if __name__ == "__main__":
    main()
