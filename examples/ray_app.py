"""dstack tasks from inside an existing Ray application, through the Python API.

The application connects to Ray as it always does; `Client()` then reuses that connection. It
submits a task (a dict here; a path to a .dstack.yml works the same), waits for the run and
reads its logs, while its own Ray tasks go on as usual.

    python examples/ray_app.py                 # on a node of the cluster (or RAY_ADDRESS=...)
"""

import os

import ray

from dstack_ray import Client

ray.init(address=os.environ.get("RAY_ADDRESS", "auto"))


@ray.remote(num_cpus=0)
def prepare_shard(index: int) -> str:
    return f"shard-{index}"


shards = ray.get([prepare_shard.remote(i) for i in range(2)])
print("prepared", ", ".join(shards), flush=True)

client = Client()  # the application's own Ray connection
run = client.apply(
    {
        "type": "task",
        "name": "from-ray-app",
        "nodes": 2,
        "env": {"SHARDS": " ".join(shards)},
        "commands": [
            'shard=$(echo $SHARDS | cut -d" " -f$((DSTACK_NODE_RANK + 1)))',
            'echo "node $DSTACK_NODE_RANK of $DSTACK_NODES_NUM on $(hostname) processes $shard"',
        ],
        "resources": {"cpu": 1, "memory": "1GB.."},
    },
    replace=True,  # a rerun of this script replaces a run still active under the same name
)
print(f"submitted {run.name}", flush=True)
status = run.wait(timeout=300)
for rank in range(2):
    for line in run.logs(rank=rank):
        print(f"[{rank}] {line}", flush=True)
print(f"run {run.name}: {status.value}", flush=True)
raise SystemExit(0 if status.value == "done" else 1)
