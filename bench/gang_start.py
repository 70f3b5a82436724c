"""Gang start on a simulated 4-node cluster: submit until all four ranks run, against one node;
each from an idle cluster (Ray's numbers show every CPU free).

    python bench/gang_start.py [--reps 5]
"""

from __future__ import annotations

import argparse
import time

from common import client, report, summary, task


def until_idle(timeout: float = 30.0) -> None:
    """Until Ray shows every CPU free again: the previous rep's placement group is gone from
    its numbers (each rep is a start on an idle cluster, not after a run that just ended)."""
    import ray

    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0) and time.monotonic() < deadline:
        time.sleep(0.01)


def until_all_running(c, name: str, nodes: int) -> float:
    until_idle()
    started = time.perf_counter()
    run = c.apply(task(name, ["sleep 30"], nodes=nodes))
    while not (run.jobs and all(j.status.value == "running" for j in run.jobs)):
        run.wait_change(1.0)
        if run.status.is_finished():
            raise RuntimeError(f"{name} ended: {run.status_message}")
    elapsed = time.perf_counter() - started
    run.stop(abort=True)
    run.wait(60)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(4):
        cluster.add_node(num_cpus=1, object_store_memory=80 * 1024**2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    c = client(stop_grace_seconds=1)
    until_all_running(c, "warm-4", 4), until_all_running(c, "warm-1", 1)
    four = [until_all_running(c, f"gang4-{i}", 4) for i in range(args.reps)]
    one = [until_all_running(c, f"gang1-{i}", 1) for i in range(args.reps)]
    figures = {"four_nodes": summary(four), "one_node": summary(one)}
    figures["ratio_four_vs_one"] = round(figures["four_nodes"]["median"] / figures["one_node"]["median"], 3)
    report("gang_start", figures)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
