"""dstack's GPU utilization policy: stop a job whose GPU stayed idle for a whole window."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

# dstack checks only once samples cover the window: the oldest one within this of its start.
COVERAGE_SLACK_SECONDS = 60.0

Sample = Tuple[float, float]  # (UNIX time, utilization percent)


def utilization_violation(
    samples_by_gpu: Dict[str, List[Sample]],
    min_utilization: int,
    time_window: int,
    now: float,
) -> Optional[str]:
    """The termination message when any GPU of one job had every sample in the window below
    the minimum; None when it did not, or when the samples do not cover the window yet."""
    start = now - time_window
    in_window = {gpu: [u for at, u in samples if at > start] for gpu, samples in samples_by_gpu.items()}
    moments = [at for samples in samples_by_gpu.values() for at, _ in samples if at > start]
    if not moments or min(moments) - start > COVERAGE_SLACK_SECONDS:
        return None  # not enough samples yet
    for values in in_window.values():
        if values and all(u < min_utilization for u in values):
            return f"The job GPU utilization below {min_utilization}% for {time_window} seconds"
    return None


def prune(samples: List[Sample], keep_after: float) -> List[Sample]:
    """The samples newer than `keep_after`, in time order, without duplicates."""
    return sorted({s for s in samples if s[0] > keep_after})
