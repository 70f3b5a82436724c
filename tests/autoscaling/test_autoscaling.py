"""On an autoscaling cluster a pending placement group is the demand signal."""

from __future__ import annotations

import ray

from dstack_ray.models import RunStatus
from tests.helpers import wait_for

# Ray's fake node provider cannot give node types a `memory` resource, so the autoscaler could
# never satisfy a bundle that asks for memory: these tasks ask for none (`memory: 0..`).
TASK = {"type": "task", "resources": {"cpu": 1, "memory": "0..", "gpu": "H100:1"}}


def test_plan_and_offers_show_the_autoscaler_node_type(client):
    cfg = client.load({**TASK, "name": "plan-only", "nodes": 2, "commands": ["true"]})
    plan = client.plan(cfg)
    assert plan.needs_new_nodes and plan.no_capacity is None
    offers = client.offers(cfg)
    autoscaler = [o for o in offers.cluster if o.backend == "ray autoscaler"]
    assert autoscaler and autoscaler[0].instance_type == "gpu-worker"
    assert autoscaler[0].availability == "up to 2 more"


def test_two_node_gpu_task_runs_once_the_autoscaler_adds_nodes(client):
    assert not [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")]
    run = client.apply({**TASK, "name": "scale-up", "nodes": 2, "commands": ["echo rank $DSTACK_NODE_RANK of $DSTACK_NODES_NUM"]})
    assert wait_for(lambda: run.refresh().record.wait_reason == "waiting for the autoscaler" or run.status.is_finished(), 60)
    assert run.wait(240) == RunStatus.DONE, run.events()
    assert list(run.logs(rank=1)) == ["rank 1 of 2"]
    assert len({j.node_id for j in run.jobs}) == 2


def test_impossible_task_is_no_capacity(client):
    run = client.apply({**TASK, "name": "impossible", "resources": {"cpu": 1, "memory": "0..", "gpu": "H100:4"}, "commands": ["true"]})
    assert run.wait(60) == RunStatus.FAILED
    assert run.status_message == "no capacity"
    assert "4 GPUs" in run.jobs[0].termination_message
