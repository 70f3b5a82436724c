"""dstack's retry rules: which failure is retried, for how long, and after which delay."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import List, Optional, Sequence

from dstack_ray.config.profiles import Retry, RetryEvent
from dstack_ray.models import JobTerminationReason


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    event: Optional[RetryEvent]
    limit_exceeded: bool = False  # covered by the policy, but its duration ran out


def decide(
    policy: Optional[Retry],
    reasons: Sequence[JobTerminationReason],
    now: datetime,
    run_started_at: datetime,
    last_provisioned_at: Optional[datetime],
) -> RetryDecision:
    """Whether a failed attempt is resubmitted, by dstack's clock:

    - `no-capacity` when the run never provisioned: the run's age (from its submission, or the
      schedule's trigger time) against `retry.duration`;
    - any covered event after a provisioned attempt: time since that attempt was last active.
    One failed node resubmits the whole run, so the attempt is judged by its first failure.
    """
    events = [r.to_retry_event() for r in reasons]
    event = next((e for e in events if e is not None), None)
    if policy is None or event is None:
        return RetryDecision(False, event)
    if event == RetryEvent.NO_CAPACITY and last_provisioned_at is None:
        if RetryEvent.NO_CAPACITY not in policy.on_events:
            return RetryDecision(False, event)
        elapsed = (now - run_started_at).total_seconds()
    else:
        if event not in policy.on_events or last_provisioned_at is None:
            return RetryDecision(False, event)
        elapsed = (now - last_provisioned_at).total_seconds()
    if elapsed > policy.duration:
        return RetryDecision(False, event, limit_exceeded=True)
    return RetryDecision(True, event)


def backoff(delays: List[float], resubmission: int) -> float:
    """dstack's pending delays (15s, 30s, 1m, 2m, 5m, 10m...), indexed by resubmission - 1."""
    if not delays:
        return 0.0
    return delays[min(max(resubmission - 1, 0), len(delays) - 1)]
