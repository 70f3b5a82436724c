"""Which waiting runs the cluster admits now: one pass of the Controller's priority queue
(no Ray, no I/O: unit-tested on its own; the Controller gathers the inputs and acts on the
answer).

Runs are judged highest priority first, then oldest; one that does not fit now does not block
the ones after it that do (dstack's scheduler behaves the same). A run that nothing in the cluster
can ever hold (`no_capacity`), or that only nodes the autoscaler adds can hold, is admitted at
once: its supervisor reports no capacity, or its placement group asks the autoscaler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Hashable, List, Sequence, Set, Tuple, TypeVar

from dstack_ray.models import RunRecord
from dstack_ray.plan.planner import RunPlan

Free = TypeVar("Free")


@dataclass
class Admission:
    admitted: List[Tuple[RunRecord, RunPlan]] = field(default_factory=list)
    failed: List[Tuple[RunRecord, Exception]] = field(default_factory=list)  # could not be judged: its supervisor decides


def admission_pass(
    waiting: Sequence[RunRecord],
    plan_of: Callable[[RunRecord], Tuple[RunPlan, Hashable]],
    place: Callable[[RunPlan, "Free"], bool],
    free: "Free",
) -> Admission:
    """`plan_of(run)`: the run's plan on this cluster and a key of what it needs; `place(plan,
    free)` takes the plan's bundles from `free` if they fit (free only shrinks during a pass, so
    a need that did not fit is not tried again)."""
    result = Admission()
    refused: Set[Hashable] = set()
    for run in sorted(waiting, key=lambda r: (-r.priority, r.submitted_at)):
        try:
            plan, need = plan_of(run)
            if plan.no_capacity or plan.needs_new_nodes:
                admit = True
            else:
                admit = need not in refused and place(plan, free)
                if not admit:
                    refused.add(need)
        except Exception as e:  # one bad run must not stop every later admission
            result.failed.append((run, e))
            continue
        if admit:
            result.admitted.append((run, plan))
    return result
