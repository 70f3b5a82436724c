"""The first apply on a fresh cluster that has only Ray, and a later one, against Ray's own
`ray job submit` with the same code as `py_modules` on the same cluster.

    python bench/first_apply.py [--reps 3]

Each rep starts a fresh one-host cluster: a podman container on this machine (as the
multi-host tier makes them) whose Ray runs from a Python with `ray[default]` and nothing of
dstack-ray, no uv on PATH, its dashboard (Jobs API) reachable from here. On it, in this order:
- Ray Jobs, first: `JobSubmissionClient.submit_job` of `python -c "import dstack_ray"` with
  dstack-ray's code bundle as `py_modules` (the client uploads it, the head installs it), until
  SUCCEEDED; then a second identical submission (nothing to upload, installed already);
- dstack-ray, first: `dstack-ray apply -y` of a one-node `echo` task with `--address head:6379`
  (the client uploads its code, starts the service, whose check finds no uv, ships uv, starts
  again; the run's job waits for the node to unpack the environment) until the run is done;
  then a later apply of the same task.
Every command is a fresh process; both sides are byte-compiled on this machine (the client's
install and the hosts' Ray), the shipped code is compiled on the host at first import. Sends
traffic only to the containers it creates, and removes them on every path.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import report, summary  # noqa: E402

from tests.multihost import conftest as tier  # noqa: E402

CLI = [sys.executable, "-m", "dstack_ray_cli.main"]
TASK = "type: task\nname: {name}\ncommands:\n  - echo hello from $(hostname)\nresources:\n  cpu: 1\n  memory: 1GB\n"


def _wait_dashboard(url: str, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url + "/api/version", timeout=5).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def ray_jobs(dashboard: str, modules: List[str]) -> float:
    from ray.job_submission import JobStatus, JobSubmissionClient

    started = time.perf_counter()
    jobs = JobSubmissionClient(dashboard)
    job_id = jobs.submit_job(entrypoint='python -c "import dstack_ray"', runtime_env={"py_modules": modules})
    while not jobs.get_job_status(job_id).is_terminal():
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    assert jobs.get_job_status(job_id) == JobStatus.SUCCEEDED, jobs.get_job_logs(job_id)
    return elapsed


def apply(address: str, task: Path, env: Dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run([*CLI, "apply", "-f", str(task), "-y", "--address", address], env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    assert result.returncode == 0 and "hello from head" in result.stdout, result.stdout + result.stderr
    return elapsed


def one_rep(work: Path, rep: int) -> Dict[str, float]:
    from dstack_ray.service import ship

    (work / f"rep-{rep}").mkdir()
    hosts = tier.Hosts(work / f"rep-{rep}")
    hosts.ips = {tier.HEAD: hosts.ips[tier.HEAD]}  # one host: the head
    figures: Dict[str, float] = {}
    try:
        hosts.create_network()
        hosts.start(tier.HEAD)
        dashboard = f"http://{hosts.head_ip}:8265"
        _wait_dashboard(dashboard)
        modules = [str(path) for path in ship.code_bundle().top_level() if path.is_dir()]  # the Jobs SDK takes no .py files
        figures["ray_jobs_first_s"] = ray_jobs(dashboard, modules)
        figures["ray_jobs_later_s"] = ray_jobs(dashboard, modules)
        state = Path(tempfile.mkdtemp(prefix="dstack-ray-bench-home-"))
        env = dict(os.environ, HOME=str(state), DSTACK_RAY_SERVICE_PYTHON=tier.SERVICE_PYTHON, COLUMNS="200")
        address = f"{hosts.head_ip}:6379"
        for i, key in enumerate(("dstack_first_apply_s", "dstack_later_apply_s")):
            task = state / f"t{i}.dstack.yml"
            task.write_text(TASK.format(name=f"first-apply-{i}"))
            figures[key] = apply(address, task, env)
    finally:
        hosts.remove_all()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if not tier._podman_ready():
        sys.exit("podman and runc are needed (scripts/install-system.sh installs them)")
    conf = Path(tempfile.mkdtemp(prefix="dstack-ray-bench-podman-")) / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n[engine]\nruntime = "runc"\n')
    os.environ["CONTAINERS_CONF"] = str(conf)
    tier._remove_stale()
    tier.ray_only_python()
    work = Path(tempfile.mkdtemp(prefix="dstack-ray-bench-first-apply-"))
    reps = [one_rep(work, rep) for rep in range(args.reps)]
    figures = {key: summary([r[key] for r in reps]) for key in reps[0]}
    for key, values in figures.items():
        print(f"{key:24} median {values['median']:.2f} s  (min {values['min']:.2f}, p90 {values['p90']:.2f})")
    first, later = figures["dstack_first_apply_s"]["median"], figures["dstack_later_apply_s"]["median"]
    print(f"first apply costs {first - later:.1f} s more than a later one; Ray Jobs' first submission costs"
          f" {figures['ray_jobs_first_s']['median'] - figures['ray_jobs_later_s']['median']:.1f} s more than its second")
    report("first_apply", figures)


if __name__ == "__main__":
    main()
