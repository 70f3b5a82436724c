"""Throughput: N short runs submitted at once on the local cluster; all must reach `done`.

    python bench/throughput.py [--runs 200] [--cpus 4]

Prints runs per second (submission of the first to the end of the last) and the peak resident
memory of the Ray processes, per concurrently running run, above the idle baseline.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from common import client, report, start_local_ray, task


def ray_rss_bytes(session_dir: str) -> int:
    """Resident memory of every process of this Ray session (workers, raylet, GCS...)."""
    total = 0
    marker = session_dir.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if marker not in cmdline and b"ray::" not in cmdline:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--cpus", type=int, default=4)
    args = parser.parse_args()
    import ray

    start_local_ray(num_cpus=args.cpus)
    session = ray._private.worker.global_worker.node.get_session_dir_path()
    c = client()
    c.apply(task("warm-up", ["true"])).wait(60)
    baseline = ray_rss_bytes(session)
    peak = {"rss": baseline, "running": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss = ray_rss_bytes(session)
            if rss > peak["rss"]:
                peak["rss"] = rss
            time.sleep(0.5)

    threading.Thread(target=sample, daemon=True).start()
    started = time.perf_counter()
    runs = [c.apply(task(f"burst-{i}", ["echo ok"])) for i in range(args.runs)]
    submitted = time.perf_counter() - started
    statuses = [r.wait(900).value for r in runs]
    elapsed = time.perf_counter() - started
    done.set()
    concurrent = min(args.cpus, args.runs)  # one CPU per run: at most this many at once
    figures = {
        "runs": args.runs,
        "all_done": statuses.count("done") == args.runs,
        "submit_seconds": round(submitted, 2),
        "total_seconds": round(elapsed, 2),
        "runs_per_second": round(args.runs / elapsed, 2),
        "peak_ray_rss_mib": round(peak["rss"] / 2**20, 1),
        "baseline_ray_rss_mib": round(baseline / 2**20, 1),
        "peak_extra_mib_per_concurrent_run": round((peak["rss"] - baseline) / 2**20 / concurrent, 1),
    }
    report("throughput", figures)


if __name__ == "__main__":
    main()
