"""Run metrics for Ray's monitoring (Prometheus through each node's metrics agent).

The Controller sees every change of every run, so it keeps these up to date with
`ray.util.metrics`; Ray exports them as `ray_dstack_*` next to its own metrics, where the
Grafana board in `cluster_configs/grafana/dstack-ray-runs.json` reads them:

- `dstack_runs{status}`: runs by status (gauge);
- `dstack_run_queue_wait_seconds`: from submission until placement started (histogram);
- `dstack_run_time_to_running_seconds`: from submission until every node ran (histogram);
- `dstack_run_duration_seconds{status}`: from submission until the run ended (histogram);
- `dstack_run_retries_total{reason}`: attempts after the first (counter).

The node agents export `dstack_gpu_utilization`, `dstack_gpu_memory_used_bytes` and
`dstack_job_cpu_percent`, `dstack_job_memory_bytes`, tagged by run and rank.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from collections import Counter
from typing import Any, Dict, Iterable, Optional, Tuple

from dstack_ray.models import RunRecord, RunStatus

logger = logging.getLogger(__name__)

# Seconds: a run waits from milliseconds (a free node) to hours (a busy queue, an autoscaler).
BOUNDARIES = [0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600]
_STARTED = {RunStatus.PROVISIONING, RunStatus.RUNNING, RunStatus.TERMINATING} | {
    s for s in RunStatus if s.is_finished()
}


class RunMetrics:
    """Observes run records as they change; every metric call is best effort (a metrics
    problem never disturbs the Controller)."""

    def __init__(self, runs: Iterable[RunRecord] = (), history: Optional[Dict[str, int]] = None) -> None:
        """`runs`: the runs the Controller follows (active ones); `history`: runs per status
        value of all the stored ones (those included), counted by the store."""
        self._seen: Dict[str, Tuple[RunStatus, int, bool, bool]] = {}  # id -> status, attempt, placed, ran
        self._last_reason: Dict[str, str] = {}  # id -> why a job of the current attempt ended
        self._metrics: Optional[Dict[str, Any]] = None
        # Runs by status, kept by transitions (not recounted on every change: the history grows).
        self._counts: Counter = Counter()
        for run in runs:
            self._seen[run.id] = (run.status, run.attempt, run.status in _STARTED, run.status.is_finished())
            if history is None:
                self._counts[run.status] += 1
        for value, count in (history or {}).items():
            if value in RunStatus._value2member_map_:
                self._counts[RunStatus(value)] += count

    def export_counts(self) -> None:
        """Every status's count (at start: the runs loaded from the store)."""
        for status in RunStatus:
            self._export_count(status)

    def forget(self, run: RunRecord) -> None:
        """A run left the Controller (deleted or replaced)."""
        seen = self._seen.pop(run.id, None)
        self._last_reason.pop(run.id, None)
        status = seen[0] if seen is not None else run.status  # a stored run never observed here
        self._counts[status] -= 1
        self._export_count(status)

    def _make(self) -> Dict[str, Any]:
        if self._metrics is None:
            from ray.util.metrics import Counter, Gauge, Histogram

            self._metrics = {
                "runs": Gauge("dstack_runs", description="dstack-ray runs by status", tag_keys=("status",)),
                "queue_wait": Histogram(
                    "dstack_run_queue_wait_seconds", description="From submission until placement started", boundaries=BOUNDARIES
                ),
                "time_to_running": Histogram(
                    "dstack_run_time_to_running_seconds", description="From submission until the run was running", boundaries=BOUNDARIES
                ),
                "duration": Histogram(
                    "dstack_run_duration_seconds", description="From submission until the run ended", boundaries=BOUNDARIES, tag_keys=("status",)
                ),
                "retries": Counter("dstack_run_retries_total", description="Attempts after the first", tag_keys=("reason",)),
            }
        return self._metrics

    def observe(self, run: RunRecord) -> None:
        try:
            self._observe(run)
        except Exception:
            logger.debug("cannot export run metrics", exc_info=True)

    def _export_count(self, status: RunStatus) -> None:
        try:
            self._make()["runs"].set(self._counts[status], tags={"status": status.value})
        except Exception:
            logger.debug("cannot export run metrics", exc_info=True)

    def _observe(self, run: RunRecord) -> None:
        metrics = self._make()
        now = datetime.now(timezone.utc)
        waited = (now - run.submitted_at).total_seconds()
        known = self._seen.get(run.id)
        status, attempt, placed, ran = known or (RunStatus.SUBMITTED, run.attempt, False, False)
        if not placed and run.status in _STARTED:
            metrics["queue_wait"].observe(waited)
            placed = True
        if not ran and run.status == RunStatus.RUNNING:
            metrics["time_to_running"].observe(waited)
            ran = True
        if run.attempt > attempt:
            reason = self._last_reason.pop(run.id, "retry")
            metrics["retries"].inc(run.attempt - attempt, tags={"reason": reason})
        ended = [job.termination_reason.value for job in run.jobs if job.termination_reason is not None]
        if ended:
            self._last_reason[run.id] = ended[0]
        if run.status.is_finished() and not status.is_finished():
            metrics["duration"].observe(((run.finished_at or now) - run.submitted_at).total_seconds(), tags={"status": run.status.value})
        self._seen[run.id] = (run.status, run.attempt, placed, ran)
        if run.status.is_finished():
            self._last_reason.pop(run.id, None)
        if known is None or status != run.status:
            if known is not None:
                self._counts[status] -= 1
                self._export_count(status)
            self._counts[run.status] += 1
            self._export_count(run.status)
