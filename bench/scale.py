"""Scale: a long history and a long queue on the embedded head.

    python bench/scale.py [--history 10000] [--queued 2000] [--cpus 2]

1. `--history` finished runs are written into a fresh state directory (records, jobs and an
   event each, as the Controller writes them) before the Controller starts.
2. With that history: `list_runs` of the newest 50 and `ps` (the same query plus the table the
   CLI prints), each 30 times.
3. `--queued` one-CPU runs are submitted at once to a head with `--cpus` CPUs, so nearly all of
   them queue; every `apply` is timed.
4. Until every run ended: the Controller's scheduling passes (`admission_stats`: runs waiting,
   the pass's wall time and the CPU time of its thread — on a busy 2-core head the wall time
   also counts waiting for a CPU — plans made and garbage collection in it) and its resident
   memory; `list_runs` is timed again with the queue.

Ends with one JSON line like the other benchmarks. The baseline in the same run is the first
`list_runs` with an empty history.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Dict, List

from common import SMALL, report, start_local_ray


def percentiles(values: List[float]) -> Dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]  # noqa: E731
    return {"p50": round(pick(0.5) * 1000, 1), "p90": round(pick(0.9) * 1000, 1), "p99": round(pick(0.99) * 1000, 1), "max": round(ordered[-1] * 1000, 1), "n": len(ordered)}


def seed_history(state_dir: Path, count: int) -> None:
    """`count` finished runs, as if they had run over the past weeks."""
    from dstack_ray.config.loader import parse_configuration
    from dstack_ray.models import JobRecord, JobStatus, JobTerminationReason, RunRecord, RunSpec, RunStatus, RunTerminationReason
    from dstack_ray.store import Store

    store = Store(state_dir / "state.db")
    cfg = parse_configuration({"type": "task", "commands": ["python train.py"], "env": {"STEPS": "100"}, "resources": dict(SMALL)})
    configuration = cfg.model_dump(mode="json", exclude_unset=True)
    start = datetime.now(timezone.utc) - timedelta(days=30)
    for index in range(count):
        at = start + timedelta(seconds=index * 200)
        run_id = uuid.uuid4().hex
        job = JobRecord(
            run_id=run_id, attempt=0, rank=0, resources="cpu=1 mem=0GB", status=JobStatus.DONE, exit_code=0,
            termination_reason=JobTerminationReason.DONE_BY_RUNNER, submitted_at=at, started_at=at, finished_at=at + timedelta(seconds=60),
        )
        run = RunRecord(
            id=run_id, name=f"history-{index}", status=RunStatus.DONE, termination_reason=RunTerminationReason.ALL_JOBS_DONE,
            status_message="done", submitted_at=at, last_processed_at=at, finished_at=at + timedelta(seconds=60),
            spec=RunSpec(run_name=f"history-{index}", configuration=configuration, submission_id=uuid.uuid4().hex), jobs=[job],
        )
        store.save_run(run)
        store.save_jobs(run.jobs)
        store.add_event(run_id, "submitted (1 node(s))", at)
    store.close()


def controller_rss(peak: Dict[str, float], done: threading.Event) -> None:
    while not done.is_set():
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if b"ray::Controller" not in (entry / "cmdline").read_bytes():
                    continue
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        peak["rss"] = max(peak["rss"], int(line.split()[1]) * 1024)
            except OSError:
                continue
        done.wait(0.5)


def timed(call, times: int) -> List[float]:
    took = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        took.append(time.perf_counter() - started)
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--history", type=int, default=10_000)
    parser.add_argument("--queued", type=int, default=2000)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    from rich.console import Console

    from dstack_ray import Client
    from dstack_ray.runtime.settings import RuntimeSettings
    from dstack_ray_cli.runs_cmd import listed_runs, runs_table

    start_local_ray(num_cpus=args.cpus)
    empty = Client(settings=RuntimeSettings(state_dir=tempfile.mkdtemp(prefix="dstack-ray-bench-empty-")))
    empty.list_runs(limit=50)
    baseline = timed(lambda: empty.list_runs(limit=50), 30)

    import ray

    ray.kill(ray.get_actor("dstack:controller", namespace="dstack"), no_restart=True)  # the next client brings its own
    ray.kill(ray.get_actor("dstack:supervisor", namespace="dstack"), no_restart=True)
    state = Path(tempfile.mkdtemp(prefix="dstack-ray-bench-scale-"))
    started = time.perf_counter()
    seed_history(state, args.history)
    seeded = time.perf_counter() - started
    started = time.perf_counter()
    c = Client(settings=RuntimeSettings(state_dir=str(state)))
    c.list_runs(limit=1)
    controller_start = time.perf_counter() - started

    peak = {"rss": 0.0}
    done = threading.Event()
    threading.Thread(target=controller_rss, args=(peak, done), daemon=True).start()

    newest = c.list_runs(limit=50)
    assert len(newest) == 50 and newest[0].name == f"history-{args.history - 1}", [r.name for r in newest[:3]]
    list_50 = timed(lambda: c.list_runs(limit=50), 30)
    quiet = Console(file=io.StringIO(), width=160)
    ps_50 = timed(lambda: quiet.print(runs_table(listed_runs(c, True, 50), False)), 30)

    task = {"type": "task", "commands": ["true"], "resources": dict(SMALL)}
    applies, runs = [], []
    submit_started = time.perf_counter()
    for index in range(args.queued):
        t0 = time.perf_counter()
        runs.append(c.apply({**task, "name": f"queued-{index}"}))
        applies.append(time.perf_counter() - t0)
    submitted = time.perf_counter() - submit_started
    list_50_queued = timed(lambda: c.list_runs(limit=50), 30)
    statuses = [r.wait(3600).value for r in runs]
    drained = time.perf_counter() - submit_started
    done.set()

    stats = [entry for entry in c._controller._call(c._controller.handle.admission_stats) if entry[1] > 0]
    passes = [(entry[1], entry[2]) for entry in stats]
    slowest = max(stats, key=lambda entry: entry[2], default=None)
    buckets: Dict[str, List[float]] = {}
    step = max(1, args.queued // 4)
    for waiting, seconds in passes:
        low = min(waiting // step * step, args.queued)
        buckets.setdefault(f"{low}..{low + step - 1} waiting", []).append(seconds)
    figures = {
        "history_runs": args.history,
        "queued_runs": args.queued,
        "head_cpus": args.cpus,
        "seed_seconds": round(seeded, 1),
        "controller_start_seconds_with_history": round(controller_start, 2),
        "list_runs_newest_50_ms_empty_history": percentiles(baseline),
        "list_runs_newest_50_ms": percentiles(list_50),
        "ps_newest_50_ms": percentiles(ps_50),
        "apply_ms": percentiles(applies),
        "list_runs_newest_50_ms_while_queued": percentiles(list_50_queued),
        "admission_pass_ms": percentiles([s for _, s in passes]),
        "admission_pass_ms_by_queue": {k: percentiles(v) for k, v in sorted(buckets.items(), key=lambda kv: -int(kv[0].split("..")[0]))},
        "max_waiting_seen": max((w for w, _ in passes), default=0),
        "admission_pass_cpu_ms": percentiles([entry[3] for entry in stats]),
        "slowest_pass": {
            "waiting": slowest[1], "ms": round(slowest[2] * 1000, 1), "cpu_ms": round(slowest[3] * 1000, 1),
            "plans_made": slowest[4], "gc_ms": round(slowest[5] * 1000, 1),
        } if slowest else None,
        "passes_with_gc": sum(1 for entry in stats if entry[5] > 0),
        "all_finished": statuses.count("done") == args.queued,
        "statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
        "submit_seconds": round(submitted, 1),
        "drain_seconds": round(drained, 1),
        "runs_per_second": round(args.queued / drained, 2),
        "peak_controller_rss_mib": round(peak["rss"] / 2**20, 1),
    }
    report("scale", figures)


if __name__ == "__main__":
    os.environ.setdefault("DSTACK_RAY_LOG_LEVEL", "warning")
    main()
