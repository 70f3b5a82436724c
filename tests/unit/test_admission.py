"""One pass of the Controller's priority queue (runtime/admission.py), without Ray."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Dict, List

from dstack_ray.models import RunRecord, RunStatus
from dstack_ray.runtime.admission import admission_pass

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _run(name: str, priority: int = 0, minute: int = 0) -> RunRecord:
    at = T0 + timedelta(minutes=minute)
    return RunRecord(id=name, name=name, status=RunStatus.SUBMITTED, submitted_at=at, last_processed_at=at, priority=priority)


def _plans(needs: Dict[str, int], no_capacity=(), new_nodes=(), broken=()):
    def plan_of(run: RunRecord):
        if run.name in broken:
            raise ValueError("cannot plan")
        plan = SimpleNamespace(no_capacity="too big" if run.name in no_capacity else None, needs_new_nodes=run.name in new_nodes)
        plan.cpus = needs.get(run.name, 1)
        return plan, ("cpu", plan.cpus)

    return plan_of


def _place(plan, free: List[int]) -> bool:
    if plan.cpus > free[0]:
        return False
    free[0] -= plan.cpus
    return True


def _names(pairs) -> List[str]:
    return [run.name for run, _ in pairs]


def test_highest_priority_first_then_oldest_and_a_big_run_blocks_no_smaller_one():
    waiting = [_run("old-small", 0, 0), _run("urgent-big", 10, 5), _run("urgent-small", 10, 6), _run("new-small", 0, 9)]
    decided = admission_pass(waiting, _plans({"urgent-big": 8}), _place, [3])
    assert _names(decided.admitted) == ["urgent-small", "old-small", "new-small"]  # urgent-big waits; 3 CPUs used
    assert decided.failed == []


def test_a_need_that_did_not_fit_is_not_tried_again_in_the_pass():
    tried: List[str] = []

    def place(plan, free):
        tried.append(plan.cpus)
        return _place(plan, free)

    waiting = [_run("a", 0, 0), _run("b", 0, 1), _run("c", 0, 2)]
    decided = admission_pass(waiting, _plans({"a": 4, "b": 4, "c": 1}), place, [2])
    assert _names(decided.admitted) == ["c"] and tried == [4, 1]


def test_runs_no_node_can_hold_or_only_new_nodes_can_are_let_through_and_errors_do_not_stop_the_pass():
    waiting = [_run("impossible", 5), _run("autoscale", 4), _run("broken", 3), _run("fits", 0)]
    decided = admission_pass(waiting, _plans({"impossible": 99, "autoscale": 99}, no_capacity={"impossible"}, new_nodes={"autoscale"}, broken={"broken"}), _place, [1])
    assert _names(decided.admitted) == ["impossible", "autoscale", "fits"]
    assert [(run.name, str(error)) for run, error in decided.failed] == [("broken", "cannot plan")]
