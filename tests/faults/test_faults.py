"""Kill every piece mid-run: the run ends right (or is retried), logs and store survive, and no
process of the run is left."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from dstack_ray.models import JobStatus, JobTerminationReason, RunStatus, RunTerminationReason
from tests.helpers import no_leftovers, processes_matching, wait_for

SMALL = {"cpu": 1, "memory": "256MB"}


def task(name, commands, **extra):
    return {"type": "task", "name": name, "commands": commands, "resources": dict(SMALL), **extra}


def pids(marker: str):
    return [int(line.split(":", 1)[0]) for line in processes_matching(marker)]


def running(run, timeout=60):
    assert wait_for(lambda: run.refresh().jobs and all(j.status == JobStatus.RUNNING for j in run.jobs), timeout)


def store_is_consistent(settings, run):
    """The SQLite store agrees with what the Controller serves."""
    db = sqlite3.connect(Path(settings.state_dir) / "state.db")
    rows = db.execute("SELECT record FROM jobs WHERE run_id = ?", (run.id,)).fetchall()
    db.close()
    assert rows, "the run's jobs are in the store"
    import json

    latest = [json.loads(r[0]) for r in rows if json.loads(r[0])["attempt"] == run.record.attempt]
    assert sorted(j["status"] for j in latest) == sorted(j.status.value for j in run.jobs)


def node_agent(node_id: str):
    import ray

    from dstack_ray.runtime.settings import NAMESPACE

    return ray.get_actor(f"dstack:agent:{node_id}", namespace=NAMESPACE)


def test_sigkill_of_the_node_agent_loses_nothing(client, settings):
    """The agent actor dies mid-run (its node stays): Ray restarts it on the node, it finds the
    job's guard still running and ships on from where the Controller's log ends."""
    import ray

    run = client.apply(task("kill-agent", ["for i in $(seq 1 60); do echo tick-$i; sleep 0.1; done"]))
    running(run)
    assert wait_for(lambda: "tick-5" in list(run.logs()), 30)
    agent = node_agent(run.jobs[0].node_id)
    before = ray.get(agent.ping.remote())["pid"]
    os.kill(before, signal.SIGKILL)
    assert run.wait(90) == RunStatus.DONE, run.events()
    assert list(run.logs()) == [f"tick-{i}" for i in range(1, 61)]  # none lost, none twice
    after = ray.get(agent.ping.remote())["pid"]
    assert after != before  # a new agent process finished the job
    store_is_consistent(settings, run)
    # Later jobs on the node use the restarted agent; it is not started again.
    again = client.apply(task("after-agent-kill", ["echo fine"]))
    assert again.wait(60) == RunStatus.DONE
    if again.jobs[0].node_id == run.jobs[0].node_id:
        assert ray.get(agent.ping.remote())["pid"] == after


def test_one_agent_per_node_started_once(client):
    """Each node has one agent actor; runs after the first on a node reuse it."""
    import ray

    runs = [client.apply(task(f"agent-reuse-{i}", ["echo ok"], nodes=3)) for i in range(2)]
    for run in runs:
        assert run.wait(60) == RunStatus.DONE, run.events()
    pids_by_run = [{j.node_id: ray.get(node_agent(j.node_id).ping.remote())["pid"] for j in run.jobs} for run in runs]
    assert len(set(pids_by_run[0].values())) == 3 and pids_by_run[0] == pids_by_run[1]
    agent_pids = {int(line.split(":", 1)[0]) for line in processes_matching("ray::NodeAgent")}
    assert set(pids_by_run[0].values()) <= agent_pids


def test_killing_the_command_fails_with_its_exit_status(client, settings):
    run = client.apply(task("kill-command", ["echo before", "sleep 31381"]))
    running(run)

    def command_pids():  # the command itself, not the guard whose argv mentions it
        return [int(line.split(":", 1)[0]) for line in processes_matching("sleep 31381") if line.split(": ", 1)[1].startswith("sleep")]

    assert wait_for(command_pids, 30)
    for pid in command_pids():
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    assert run.wait(60) == RunStatus.FAILED
    assert run.jobs[0].termination_reason == JobTerminationReason.CONTAINER_EXITED_WITH_ERROR
    assert run.jobs[0].exit_code == 137
    assert "before" in list(run.logs())
    assert no_leftovers("sleep 31381") == []


def test_killing_the_supervisor_applies_the_retry_policy(client, settings, tmp_path):
    marker = tmp_path / "second"
    run = client.apply(
        task("kill-supervisor", [f"if [ -f {marker} ]; then echo recovered; else echo first; sleep 31382; fi"], retry={"on_events": ["interruption"], "duration": "1h"})
    )
    running(run)
    assert wait_for(lambda: "first" in list(run.logs()), 30)
    marker.touch()
    for pid in pids("DstackSupervisor") + pids("ray::SupervisorHost"):
        os.kill(pid, signal.SIGKILL)
    assert no_leftovers("sleep 31382", timeout=30) == []
    # The successor host resubmits it after dstack's backoff (20 s here).
    assert run.wait(120) == RunStatus.DONE, run.events()
    assert run.record.attempt == 1
    assert list(run.logs(attempt=0)) == ["first"]
    assert list(run.logs()) == ["recovered"]
    assert any("supervisor" in m for _, m in run.events())
    store_is_consistent(settings, run)


def test_killing_the_supervisor_without_retry_fails_the_run(client):
    run = client.apply(task("kill-supervisor-2", ["sleep 31383"]))
    running(run)
    for pid in pids("DstackSupervisor") + pids("ray::SupervisorHost"):
        os.kill(pid, signal.SIGKILL)
    assert run.wait(90) == RunStatus.FAILED
    assert run.jobs[0].termination_reason == JobTerminationReason.INTERRUPTED_BY_NO_CAPACITY
    assert no_leftovers("sleep 31383") == []


def test_killing_the_controller_loses_nothing(client, settings):
    run = client.apply(task("kill-controller", ["for i in $(seq 1 8); do echo tick-$i; sleep 0.4; done"]))
    assert wait_for(lambda: "tick-2" in list(run.logs()), 30)
    for pid in pids("ray::Controller") + pids("DstackController"):
        os.kill(pid, signal.SIGKILL)
    assert run.wait(90) == RunStatus.DONE
    assert list(run.logs()) == [f"tick-{i}" for i in range(1, 9)]
    store_is_consistent(settings, run)


def test_stop_during_provisioning(client):
    blocker = client.apply(task("blocker", ["sleep 31384"], nodes=3))
    running(blocker)
    waiting = client.apply(task("waiting", ["echo never"], nodes=3))
    assert wait_for(lambda: waiting.refresh().record.wait_reason == "waiting for resources", 30)
    waiting.stop()
    assert waiting.wait(30) == RunStatus.TERMINATED
    assert waiting.termination_reason == RunTerminationReason.STOPPED_BY_USER
    blocker.stop()
    assert blocker.wait(30) == RunStatus.TERMINATED
    assert no_leftovers("sleep 31384") == []
    assert list(waiting.logs()) == []


def test_stop_during_the_startup_order_wait(client):
    # The workers set up a Python environment first, so the master waits for them a while.
    run = client.apply(task("startup-wait", ["echo started; sleep 31385"], nodes=3, startup_order="workers-first", python="3.11"))
    assert wait_for(lambda: any("waiting for the workers" in m for _, m in run.events()), 60)
    run.stop()
    assert run.wait(60) == RunStatus.TERMINATED, (run.events(), run.jobs)
    assert run.jobs[0].status_message == "stopped"
    assert no_leftovers("sleep 31385", timeout=30) == []


def test_stop_during_retry_backoff(client):
    run = client.apply(task("backoff", ["exit 1"], retry={"on_events": ["error"]}))
    assert wait_for(lambda: run.refresh().status == RunStatus.PENDING, 60)
    started = time.monotonic()
    run.stop()
    assert run.wait(30) == RunStatus.TERMINATED
    assert time.monotonic() - started < 15  # not after the 20 s backoff
    assert run.termination_reason == RunTerminationReason.STOPPED_BY_USER


def test_a_burst_of_300_submissions(client):
    names = [f"burst-{i}" for i in range(300)]
    runs = [client.apply(task(name, ["echo ok"])) for name in names]
    for run in runs:
        assert run.wait(600) == RunStatus.DONE, (run.name, run.status, run.events())
    listed = {r.name: r for r in client.list_runs()}
    assert all(name in listed and listed[name].status == RunStatus.DONE for name in names)
    outputs = {run.name: list(run.logs()) for run in runs[::25]}
    assert all(lines == ["ok"] for lines in outputs.values()), outputs


# --- hardening: faults that used to lose work or leave processes ----------------------------------


def test_sigkill_of_the_guard_leaves_no_process_of_the_run(client):
    run = client.apply(task("kill-guard", ["echo before", "sleep 31390 & sleep 31391; wait"]))
    running(run)
    assert wait_for(lambda: "before" in list(run.logs()), 30)
    # The guard is the parent of the job's shell (guards are forked from the node agent's guard
    # fork server, so their command line is the server's).
    shells = [int(line.split(":", 1)[0]) for line in processes_matching("sleep 31391") if "bash" in line]
    parents = {int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) for pid in shells}
    guards = [pid for pid in parents if b"dstack_ray.exec.guard" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert guards
    for pid in guards:
        os.kill(pid, signal.SIGKILL)
    assert run.wait(60) == RunStatus.FAILED
    assert run.jobs[0].exit_code is not None or run.jobs[0].termination_message
    assert no_leftovers("sleep 3139") == []


def test_a_full_head_disk_does_not_block_the_command(client, settings):
    """The head's log volume fills up mid-run: the command is never blocked, the run ends as
    the command does, and an event says what could not be stored."""
    run = client.apply(task("disk-full", ["sleep 2", "head -c 800000 /dev/zero | tr '\\0' 'x' | fold -w 100", "echo finished"]))
    logs = Path(settings.state_dir) / "logs" / run.id
    logs.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(logs)], check=True)
    try:
        assert run.wait(120) == RunStatus.DONE, run.events()
        messages = [message for _, message in run.events()]
        assert any("could not be stored on the head and were dropped" in m and "No space left" in m for m in messages), messages
    finally:
        subprocess.run(["umount", "-l", str(logs)], check=False)


def test_an_unreadable_record_is_quarantined_and_the_controller_starts(client, settings):
    good = client.apply(task("before-corruption", ["echo kept"]))
    assert good.wait(60) == RunStatus.DONE
    victim = client.apply(task("to-be-corrupted", ["true"]))
    assert victim.wait(60) == RunStatus.DONE
    db = sqlite3.connect(Path(settings.state_dir) / "state.db")
    import json

    document = json.loads(db.execute("SELECT record FROM runs WHERE id = ?", (victim.id,)).fetchone()[0])
    document["status"] = "from-a-newer-version"
    db.execute("UPDATE runs SET record = ? WHERE id = ?", (json.dumps(document), victim.id))
    db.commit()
    db.close()
    for pid in pids("ray::Controller") + pids("DstackController"):
        os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: _ping(client) is not None, 60)
    quarantined = _ping(client)["quarantined"]
    assert [q["run_id"] for q in quarantined] == [victim.id] and "status" in quarantined[0]["error"]
    names = [r.name for r in client.list_runs()]
    assert "before-corruption" in names and "to-be-corrupted" not in names
    after = client.apply(task("after-corruption", ["echo admitted"]))
    assert after.wait(60) == RunStatus.DONE and list(after.logs()) == ["admitted"]


def _ping(client):
    try:
        return client._controller._call(client._controller.handle.ping, timeout=5)
    except Exception:
        return None


def test_a_retried_submit_is_answered_once(client):
    """Ray retries `submit` on a restarted Controller when the first call saved the run but its
    reply was lost: the retry must not create a second run nor report a false conflict."""
    import uuid

    from dstack_ray.config import parse_configuration
    from dstack_ray.models import RunSpec

    cfg = parse_configuration(task("retried-submit", ["echo once"]))
    configuration = cfg.model_dump(mode="json", exclude_unset=True)
    configuration.pop("name")  # the Controller generates one
    spec = RunSpec(run_name="", configuration=configuration, submission_id=uuid.uuid4().hex)
    first = client._controller.call("submit", spec=spec.model_dump(mode="json"), payload=None)
    second = client._controller.call("submit", spec=spec.model_dump(mode="json"), payload=None)
    assert first.id == second.id and first.name == second.name
    assert [r.name for r in client.list_runs()].count(first.name) == 1


def test_output_past_the_log_limit_is_not_stored_and_says_so(client, settings):
    run = client.apply(task("log-limit", ["head -c 3000000 /dev/zero | tr '\\0' 'y' | fold -w 100", "echo done-writing"]))
    assert run.wait(120) == RunStatus.DONE, run.events()
    stored = (Path(settings.state_dir) / "logs" / run.id / "attempt-0" / "rank-0.log").stat().st_size
    assert stored <= 1 << 20
    assert any("passed the log limit of 1048576 bytes" in message for _, message in run.events())
