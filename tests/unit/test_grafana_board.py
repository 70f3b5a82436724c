"""The Grafana board for run metrics reads only metrics dstack-ray exports, under Ray's names."""

from __future__ import annotations

import json
import re
from pathlib import Path

BOARD = Path(__file__).resolve().parents[2] / "cluster_configs" / "grafana" / "dstack-ray-runs.json"
EXPORTED = {
    "ray_dstack_runs",
    "ray_dstack_run_queue_wait_seconds_bucket",
    "ray_dstack_run_time_to_running_seconds_bucket",
    "ray_dstack_run_duration_seconds_bucket",
    "ray_dstack_run_retries_total",
    "ray_dstack_gpu_utilization",
    "ray_dstack_gpu_memory_used_bytes",
    "ray_dstack_job_cpu_percent",
    "ray_dstack_job_memory_bytes",
}


def test_board_panels_query_exported_metrics():
    board = json.loads(BOARD.read_text())
    assert board["uid"] == "dstack-ray-runs" and {v["name"] for v in board["templating"]["list"]} == {"datasource", "SessionName"}
    used = set()
    for panel in board["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used |= set(re.findall(r"ray_dstack_[a-z_]+", target["expr"]))
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    assert used == EXPORTED


def test_exported_names_match_the_code():
    from dstack_ray.metrics import runs

    source = Path(runs.__file__).read_text() + Path(runs.__file__).with_name("..").resolve().joinpath("runtime", "agent.py").read_text()
    names = set(re.findall(r'"(dstack_[a-z_]+)"', source))
    bases = {name.removeprefix("ray_").removesuffix("_bucket") for name in EXPORTED}
    assert bases <= names, bases - names
