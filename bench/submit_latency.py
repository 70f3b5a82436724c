"""Submit-to-first-output latency on one warm local Ray: dstack-ray vs Ray Jobs vs a bare task.

    python bench/submit_latency.py [--reps 20]

For each repetition: dstack-ray's `Client.apply` of a one-node `echo ready` task until its first
line reaches the client; the Ray Jobs API (`JobSubmissionClient.submit_job` of the same command)
until its first log line; and a bare `ray.remote` task running the same subprocess (the floor).
"""

from __future__ import annotations

import argparse
import subprocess
import time

from common import client, report, start_local_ray, summary, task


def ours(c, i: int) -> float:
    started = time.perf_counter()
    run = c.apply(task(f"latency-{i}", ["echo ready"]))
    first = next(iter(run.logs(follow=True)))
    elapsed = time.perf_counter() - started
    assert first == "ready", first
    run.wait(60)
    return elapsed


def ray_jobs(jobs, i: int) -> float:
    started = time.perf_counter()
    job_id = jobs.submit_job(entrypoint="echo ready")
    while "ready" not in jobs.get_job_logs(job_id):
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    while not jobs.get_job_status(job_id).is_terminal():
        time.sleep(0.05)
    return elapsed


def bare_task(ray, i: int) -> float:
    @ray.remote(num_cpus=1)
    def run() -> str:
        return subprocess.run(["bash", "-c", "echo ready"], capture_output=True, text=True).stdout

    started = time.perf_counter()
    assert ray.get(run.remote()).strip() == "ready"
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    import ray
    from ray.job_submission import JobSubmissionClient

    start_local_ray(num_cpus=2, dashboard=True)
    c = client()
    jobs = JobSubmissionClient("http://127.0.0.1:8265")
    # Warm-up: start the actors and worker processes each path uses.
    ours(c, -1), ray_jobs(jobs, -1), bare_task(ray, -1)
    results = {"dstack_ray": [], "ray_jobs": [], "bare_task": []}
    for i in range(args.reps):
        results["dstack_ray"].append(ours(c, i))
        results["ray_jobs"].append(ray_jobs(jobs, i))
        results["bare_task"].append(bare_task(ray, i))
    figures = {name: summary(values) for name, values in results.items()}
    figures["ratio_vs_ray_jobs"] = round(figures["dstack_ray"]["median"] / figures["ray_jobs"]["median"], 3)
    report("submit_latency", figures)


if __name__ == "__main__":
    main()
