"""The run engine against real Ray: a simulated 3-node cluster with fake H100 GPUs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from dstack_ray.models import JobStatus, JobTerminationReason, RunStatus, RunTerminationReason
from tests.helpers import no_leftovers, processes_matching, wait_for

SMALL = {"cpu": 1, "memory": "256MB"}


def task(name, commands, **extra):
    return {"type": "task", "name": name, "commands": commands, "resources": dict(SMALL), **extra}


def env_of(run, rank=0):
    return dict(line.split("=", 1) for line in run.logs(rank=rank) if "=" in line)


def test_single_node_environment_and_exit_code(client):
    run = client.apply(task("env-one", ["env | grep -E '^(DSTACK_|CUDA_VISIBLE_DEVICES=|FOO=)' | sort"], env={"FOO": "bar", "DSTACK_NODE_RANK": "ignored-by-user?"}))
    assert run.wait(60) == RunStatus.DONE
    assert run.status_message == "exited (0)"
    assert run.termination_reason == RunTerminationReason.ALL_JOBS_DONE
    env = env_of(run)
    job = run.jobs[0]
    assert env["DSTACK_RUN_NAME"] == "env-one"
    assert env["DSTACK_RUN_ID"] == run.id
    assert len(env["DSTACK_JOB_ID"]) == 36
    assert env["DSTACK_NODES_NUM"] == "1"
    assert env["DSTACK_NODES_IPS"] == job.node_ip == env["DSTACK_MASTER_NODE_IP"]
    assert env["DSTACK_GPUS_PER_NODE"] == "0" and env["DSTACK_GPUS_NUM"] == "0"
    assert env["DSTACK_WORKING_DIR"] == env["DSTACK_REPO_DIR"]
    assert env["DSTACK_MPI_HOSTFILE"].endswith("/mpi/hostfile")
    assert env["FOO"] == "bar"
    # The user's env wins over the system variables, as in dstack.
    assert env["DSTACK_NODE_RANK"] == "ignored-by-user?"
    # A CPU-only node gets no CUDA_VISIBLE_DEVICES at all (not Ray's empty string).
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert job.status == JobStatus.DONE and job.exit_code == 0


def test_exit_code_fails_the_run(client):
    run = client.apply(task("exit-three", ["echo before", "exit 3", "echo never"]))
    assert run.wait(60) == RunStatus.FAILED
    assert run.termination_reason == RunTerminationReason.JOB_FAILED
    assert run.status_message == "exited (3)"
    job = run.jobs[0]
    assert job.termination_reason == JobTerminationReason.CONTAINER_EXITED_WITH_ERROR
    assert job.exit_code == 3
    lines = list(run.logs())
    assert "before" in lines and "never" not in lines


def test_logs_keep_every_line_in_order_with_timestamps(client):
    run = client.apply(task("many-lines", ["for i in $(seq 1 3000); do echo line-$i; done", "printf 'no newline at the end'"]))
    assert run.wait(60) == RunStatus.DONE
    lines = list(run.logs())
    numbered = [l for l in lines if l.startswith("line-")]
    assert numbered == [f"line-{i}" for i in range(1, 3001)]
    assert lines[-1] == "no newline at the end"
    times = [l.time for l in lines]
    assert times == sorted(times)
    since = times[1500]
    assert list(run.logs(since=since))[0].time >= since


def test_follow_logs_while_running(client):
    run = client.apply(task("follow", ["for i in 1 2 3; do echo tick-$i; sleep 0.3; done"]))
    started = time.monotonic()
    seen = [str(line) for line in run.logs(follow=True)]
    assert seen[:3] == ["tick-1", "tick-2", "tick-3"]
    assert time.monotonic() - started < 30
    assert run.refresh().status == RunStatus.DONE


def test_stop_keeps_logs_and_leaves_no_process(client):
    run = client.apply(task("stop-me", ["echo started", "sleep 31337"]))
    assert wait_for(lambda: "started" in list(run.logs()), 30)
    assert processes_matching("sleep 31337")
    run.stop()
    assert run.wait(30) == RunStatus.TERMINATED
    assert run.termination_reason == RunTerminationReason.STOPPED_BY_USER
    assert run.status_message == "stopped"
    assert run.jobs[0].termination_reason == JobTerminationReason.TERMINATED_BY_USER
    assert "started" in list(run.logs())
    assert no_leftovers("sleep 31337") == []


def test_abort(client):
    run = client.apply(task("abort-me", ["trap '' INT", "echo started", "sleep 31338"]))
    assert wait_for(lambda: "started" in list(run.logs()), 30)
    run.stop(abort=True)
    assert run.wait(30) == RunStatus.TERMINATED
    assert run.termination_reason == RunTerminationReason.ABORTED_BY_USER
    assert run.status_message == "aborted"
    assert no_leftovers("sleep 31338") == []


def test_max_duration(client):
    run = client.apply(task("too-long", ["echo started", "sleep 31339"], max_duration="2s"))
    assert run.wait(60) == RunStatus.FAILED  # dstack: a job over max_duration fails the run
    job = run.jobs[0]
    assert job.status == JobStatus.TERMINATED
    assert job.termination_reason == JobTerminationReason.MAX_DURATION_EXCEEDED
    assert run.error == "max duration exceeded"
    assert job.finished_at - job.started_at < __import__("datetime").timedelta(seconds=20)
    assert no_leftovers("sleep 31339") == []


def test_run_args_are_substituted(client):
    run = client.apply(task("args", ["echo args: ${{ run.args }}", "echo 'literal: $${{ run.args }}'"]), args=["--lr", "0.1 x"])
    assert run.wait(60) == RunStatus.DONE
    assert list(run.logs()) == ["args: --lr 0.1 x", "literal: ${{ run.args }}"]


def test_three_nodes_ranks_hostfile_and_gpus(client):
    run = client.apply(
        task(
            "three",
            ["echo rank=$DSTACK_NODE_RANK cuda=$CUDA_VISIBLE_DEVICES gpus=$DSTACK_GPUS_PER_NODE/$DSTACK_GPUS_NUM", "cat $DSTACK_MPI_HOSTFILE", "echo ips=$(echo $DSTACK_NODES_IPS)"],
            nodes=3,
            resources={**SMALL, "gpu": "H100:1"},
        )
    )
    assert run.wait(90) == RunStatus.DONE, (run.events(), [j.termination_message for j in run.jobs])
    jobs = run.jobs
    assert [j.rank for j in jobs] == [0, 1, 2]
    assert len({j.node_id for j in jobs}) == 3  # STRICT_SPREAD: distinct nodes
    for rank in range(3):
        lines = list(run.logs(rank=rank))
        assert lines[0] == f"rank={rank} cuda=0 gpus=1/3"
        ip = jobs[rank].node_ip
        assert lines[1:4] == [f"{j.node_ip} slots=1" for j in jobs]
        assert lines[4] == "ips=" + " ".join(j.node_ip for j in jobs)
        assert ip


def test_master_done_ends_the_run_while_workers_sleep(client):
    run = client.apply(
        task(
            "master-done",
            ['if [ "$DSTACK_NODE_RANK" = 0 ]; then sleep 1; echo master finished; else sleep 31340; fi'],
            nodes=3,
            stop_criteria="master-done",
        )
    )
    assert run.wait(60) == RunStatus.DONE
    assert run.termination_reason == RunTerminationReason.ALL_JOBS_DONE
    assert [j.status for j in run.jobs] == [JobStatus.DONE] * 3
    assert [j.termination_reason for j in run.jobs] == [JobTerminationReason.DONE_BY_RUNNER] * 3
    assert no_leftovers("sleep 31340") == []


def test_workers_first_starts_the_master_last(client):
    run = client.apply(
        task("workers-first", ['echo start $(date +%s.%N)', '[ "$DSTACK_NODE_RANK" = 0 ] || sleep 2'], nodes=3, startup_order="workers-first")
    )
    assert run.wait(60) == RunStatus.DONE
    jobs = run.jobs
    # The master's command starts only once every worker's command runs.
    assert jobs[0].started_at >= max(j.started_at for j in jobs[1:])
    master_first_line = next(iter(run.logs(rank=0)))
    assert master_first_line.time >= max(j.started_at for j in jobs[1:])
    assert any("workers-first" in message for _, message in run.events())


def test_master_first_starts_workers_after_the_master(client):
    run = client.apply(
        task("master-first", ['echo start $(date +%s.%N)', '[ "$DSTACK_NODE_RANK" != 0 ] || sleep 2'], nodes=2, startup_order="master-first")
    )
    assert run.wait(60) == RunStatus.DONE
    jobs = run.jobs
    assert jobs[1].started_at >= jobs[0].started_at
    assert next(iter(run.logs(rank=1))).time >= jobs[0].started_at


def test_failing_worker_fails_the_run_fast(client):
    started = time.monotonic()
    run = client.apply(task("fail-fast", ['if [ "$DSTACK_NODE_RANK" = 2 ]; then sleep 1; exit 7; else sleep 31341; fi'], nodes=3))
    assert run.wait(60) == RunStatus.FAILED
    assert time.monotonic() - started < 30
    assert run.status_message == "exited (7)"
    jobs = run.jobs
    assert jobs[2].termination_reason == JobTerminationReason.CONTAINER_EXITED_WITH_ERROR
    assert [j.termination_reason for j in jobs[:2]] == [JobTerminationReason.TERMINATED_BY_SERVER] * 2
    assert no_leftovers("sleep 31341") == []


def test_groups_with_ip_references(client):
    run = client.apply(
        {
            "type": "task",
            "name": "groups",
            "groups": [
                {"name": "server", "nodes": 1, "resources": {**SMALL, "gpu": 1}, "commands": ["echo server rank=$DSTACK_NODE_RANK gpus=$DSTACK_GPUS_PER_NODE"]},
                {"name": "clients", "nodes": 2, "resources": SMALL, "commands": ["echo client rank=$DSTACK_NODE_RANK server=${{ groups[0].nodes[0].IP_ADDRESS }} total=$DSTACK_GPUS_NUM"]},
            ],
        }
    )
    assert run.wait(60) == RunStatus.DONE
    server_ip = run.jobs[0].node_ip
    assert list(run.logs(rank=0)) == ["server rank=0 gpus=1"]
    assert list(run.logs(rank=1)) == [f"client rank=1 server={server_ip} total=1"]
    assert list(run.logs(rank=2)) == [f"client rank=2 server={server_ip} total=1"]
    assert [j.group for j in run.jobs] == ["server", "clients", "clients"]


def test_no_capacity_is_reported_fast(client):
    started = time.monotonic()
    run = client.apply(task("too-big", ["true"], resources={"cpu": 1, "memory": "256MB", "gpu": "H100:4"}))
    assert run.wait(30) == RunStatus.FAILED
    assert time.monotonic() - started < 20
    assert run.status_message == "no capacity"
    assert "4 GPUs" in run.jobs[0].termination_message


def test_node_removed_mid_run_is_an_interruption(client, gpu_nodes):
    import ray

    run = client.apply(task("lost-node", ["echo up", "sleep 31342"], nodes=2))
    assert wait_for(lambda: run.refresh().jobs and all(j.status == JobStatus.RUNNING for j in run.jobs), 60)
    victim_id = run.jobs[1].node_id
    victim = next(n for n in gpu_nodes.worker_nodes if n.node_id == victim_id)
    gpu_nodes.remove_node(victim, allow_graceful=False)
    assert run.wait(60) == RunStatus.FAILED
    jobs = run.jobs
    assert jobs[1].termination_reason == JobTerminationReason.INTERRUPTED_BY_NO_CAPACITY
    assert jobs[1].status_message == "interrupted"
    assert jobs[0].termination_reason == JobTerminationReason.TERMINATED_BY_SERVER
    assert "up" in list(run.logs(rank=0))
    assert no_leftovers("sleep 31342", timeout=30) == []
    assert wait_for(lambda: not any(n["NodeID"] == victim_id and n["Alive"] for n in ray.nodes()), 60)


def test_run_is_visible_followable_and_stoppable_from_another_process(client, cluster, settings):
    script = textwrap.dedent(
        f"""
        import ray
        ray.init(address={cluster.address!r})
        from dstack_ray import Client
        run = Client().apply({{"type": "task", "name": "elsewhere", "commands": ["echo hello from elsewhere", "sleep 31343"], "resources": {SMALL!r}}})
        print(run.id)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip().splitlines()[-1]
    run = client.get_run("elsewhere")
    assert run.id == run_id
    assert "elsewhere" in [r.name for r in client.list_runs()]
    follow = run.logs(follow=True)
    assert next(follow) == "hello from elsewhere"
    run.stop()
    assert list(follow) == []  # the follow ends when the node ends
    assert run.wait(30) == RunStatus.TERMINATED
    assert no_leftovers("sleep 31343") == []


def test_same_name_active_is_refused_and_finished_is_replaced(client):
    from dstack_ray.api import DstackRayError

    first = client.apply(task("same-name", ["sleep 31344"]))
    with pytest.raises(DstackRayError, match="is active"):
        client.apply(task("same-name", ["true"]))
    second = client.apply(task("same-name", ["echo second"]), replace=True)
    assert second.id != first.id
    assert processes_matching("sleep 31344") == []  # the first run was stopped before
    assert second.wait(60) == RunStatus.DONE
    third = client.apply(task("same-name", ["echo third"]))
    assert third.wait(60) == RunStatus.DONE
    assert client.get_run("same-name").id == third.id
    assert no_leftovers("sleep 31344") == []


def test_distributed_example(client):
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "distributed.dstack.yml"
    run = client.apply(example)
    assert run.wait(120) == RunStatus.DONE
    master = list(run.logs(rank=0))
    worker = list(run.logs(rank=1))
    assert master[0].startswith("torchrun --nproc-per-node=0 --node-rank=0 --nnodes=2 --master-addr=")
    assert master[1].startswith("rank 0/2 on ")
    assert "master got: rank 1 ready" in master
    assert master[-1] == "all nodes joined"
    assert worker[1].startswith("rank 1/2 on ") and worker[-1] == "worker got: welcome"


def test_partial_lines_arrive_while_the_command_runs(client):
    """Live output: a `\\r` progress bar (no newline for seconds) reaches a follower piece by
    piece while the run is running; the stored line view joins the pieces into one line."""
    run = client.apply(task("progress", ["for i in 1 2 3 4 5 6; do printf '\\r%d0%%' $i; sleep 0.4; done; echo; echo after"]))
    pieces = []
    for line in run.logs(follow=True, partial=True):
        pieces.append((str(line), line.partial, run.refresh().status))
    assert run.wait(60) == RunStatus.DONE
    partial = [(text, status) for text, is_partial, status in pieces if is_partial]
    assert partial[0][0] == "\r10%" and partial[0][1] == RunStatus.RUNNING, pieces
    assert len(partial) >= 4  # pieces came one by one, not all at the end
    assert list(run.logs()) == ["\r10%\r20%\r30%\r40%\r50%\r60%", "after"]


def ray_free_cpus() -> dict:
    """Free CPUs per node as Ray sees them (what a failed placement is explained with)."""
    import ray._private.state

    return {node[:8]: free.get("CPU", 0) for node, free in ray._private.state.available_resources_per_node().items()}


def test_attach_to_every_job_prefixes_lines_by_rank(client, capsys):
    from dstack_ray_cli.runs_cmd import stream_all_logs

    run = client.apply(task("all-jobs", ["for i in 1 2 3; do echo \"rank $DSTACK_NODE_RANK line $i\"; sleep 0.2; done"], nodes=3))
    follower = threading.Thread(target=stream_all_logs, args=(run,), daemon=True)
    follower.start()
    follower.join(120)  # bounded: a run that cannot be placed would keep it following
    assert not follower.is_alive(), f"{run.refresh().status.value}: {run.record.wait_reason}; free: {ray_free_cpus()}"
    assert run.wait(60) == RunStatus.DONE
    lines = capsys.readouterr().out.splitlines()
    for rank in range(3):
        assert [line for line in lines if line.startswith(f"[{rank}] ")] == [f"[{rank}] rank {rank} line {i}" for i in (1, 2, 3)]


def test_run_metrics_reach_rays_prometheus_endpoints(client):
    """Runs by status, time to running, duration, retries and job CPU/memory are exported by
    Ray's metrics agents (what the Grafana board in cluster_configs/grafana reads)."""
    import re
    import urllib.request

    import ray

    run = client.apply(
        task(
            "metrics-export",
            ["test -f ~/tried || { touch ~/tried; exit 1; }", "python3 -c 'import time; end = time.time() + 3\nwhile time.time() < end: pass'"],
            retry={"on_events": ["error"], "duration": "1m"},
        )
    )
    assert run.wait(120) == RunStatus.DONE, run.events()
    assert run.record.attempt == 1
    ports = [n["MetricsExportPort"] for n in ray.nodes() if n["Alive"]]
    wanted = {
        "runs_done": r'^ray_dstack_runs\{[^}]*status="done"[^}]*\} [1-9]',
        "time_to_running": r"^ray_dstack_run_time_to_running_seconds_count\{[^}]*\} [1-9]",
        "queue_wait": r"^ray_dstack_run_queue_wait_seconds_count\{[^}]*\} [1-9]",
        "duration": r'^ray_dstack_run_duration_seconds_count\{[^}]*status="done"[^}]*\} [1-9]',
        "retries": r'^ray_dstack_run_retries_total\{[^}]*reason="container_exited_with_error"[^}]*\} [1-9]',
        "job_cpu": r'^ray_dstack_job_cpu_percent\{[^}]*run="metrics-export"[^}]*\}',
        "job_memory": r'^ray_dstack_job_memory_bytes\{[^}]*run="metrics-export"[^}]*\} [1-9]',
    }
    found = {}
    _last_text = []

    def scrape() -> bool:
        text = ""
        for port in ports:
            try:
                text += urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                continue
        _last_text[:] = text.splitlines()
        for name, pattern in wanted.items():
            if re.search(pattern, text, re.MULTILINE):
                found[name] = True
        return len(found) == len(wanted)

    assert wait_for(scrape, 60, interval=2), sorted(set(wanted) - set(found))


def test_history_is_paged_and_finished_runs_stay_reachable_until_pruned(client, settings):
    """Finished runs leave the Controller's memory for the store: listings page through them
    newest first, lookups by name still work, and the retention removes the oldest for good."""
    from pathlib import Path

    runs = [client.apply(task(f"history-{i}", [f"echo history {i}"])) for i in range(3)]
    for run in runs:
        assert run.wait(60) == RunStatus.DONE
    newest = client.list_runs(limit=3)
    assert [r.name for r in newest] == ["history-2", "history-1", "history-0"]
    assert all(r.record.spec is None for r in newest)  # listings leave the spec out...
    assert newest[0].configuration.commands == ["echo history 2"]  # ...and a run fetches it when asked
    everything = list(client.iter_runs(page_size=2))
    assert [r.name for r in everything[:3]] == ["history-2", "history-1", "history-0"]
    assert len({r.id for r in everything}) == len(everything)
    assert client.get_run("history-0").status == RunStatus.DONE and list(client.get_run("history-0").logs()) == ["echo history 0".split(" ", 1)[1]]
    assert runs[0].wait_change(30).status == RunStatus.DONE  # a finished run answers at once
    oldest = everything[-2:]  # finished runs of earlier tests: removed as the retention would
    import ray

    alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    on_live_nodes = {r.id for r in oldest if {j.node_id for j in r.jobs_history() if j.node_id} <= alive}
    removed = client._controller._call(client._controller.handle.prune, None, len(everything) - 2)
    assert removed >= 2  # and runs replaced by a resubmission under their name, as old as those
    for run in oldest:
        assert client.find_run(run.id) is None
        assert not (Path(settings.state_dir) / "logs" / run.id).exists()
        if run.id in on_live_nodes:  # a node that is gone keeps its copy (README)
            assert wait_for(lambda: not (Path(settings.state_dir) / "runs" / f"{run.name}-{run.id[:8]}").exists(), 30)
    assert [r.name for r in client.list_runs(limit=3)] == ["history-2", "history-1", "history-0"]
    assert len(list(client.iter_runs())) == len(everything) - 2


def test_delete_removes_what_the_run_left_on_its_nodes(client, settings):
    """A finished 2-node run's directories (output, working directory, home) are on its nodes
    until `delete`, which has the nodes' agents remove them (the review found a secret the job
    printed still on the node after delete)."""
    from pathlib import Path

    run = client.apply(task("delete-copies", ["echo the-secret-hunter2 > left-behind.txt", "echo printed-hunter2"], nodes=2))
    assert run.wait(60) == RunStatus.DONE
    copies = Path(settings.state_dir) / "runs" / f"delete-copies-{run.id[:8]}"
    assert sorted(p.name for p in copies.iterdir()) == ["node-0", "node-1"]
    assert any(b"hunter2" in p.read_bytes() for p in copies.rglob("*") if p.is_file() and not p.is_symlink())
    run.delete()
    assert wait_for(lambda: not copies.exists(), 30)
    assert client.find_run(run.id) is None


def test_following_a_big_log_streams_in_bounded_memory(client, cluster):
    """`logs -f` of a run writing 60 MB: the reader holds one chunk at a time, not the log."""
    lines = 600_000  # 100 bytes each
    writer = f"python3 -c \"import sys\nw = sys.stdout.write\nfor i in range({lines}): w('%010d ' % i + 'x' * 88 + '\\\\n')\""
    run = client.apply(task("big-log", [writer]))
    script = textwrap.dedent(
        f"""
        import resource, ray
        ray.init(address={cluster.address!r})
        from dstack_ray import Client
        run = Client().get_run({run.id!r})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        count, ordered = 0, True
        for line in run.logs(follow=True):
            ordered = ordered and int(line[:10]) == count
            count += 1
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(count, ordered, grown // 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    count, ordered, grown_mib = out.stdout.split()[-3:]
    assert int(count) == lines and ordered == "True"
    assert int(grown_mib) < 40, grown_mib  # the whole log as str objects would be ~100 MiB
    assert run.wait(60) == RunStatus.DONE
