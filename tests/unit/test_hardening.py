"""Regression tests for the hardening review (secrets, hostile input, faults), without Ray.

Each test names the finding it covers; the Ray-backed ones are in tests/faults,
tests/containers and tests/cli.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from dstack_ray.api import Client
from dstack_ray.config import ConfigurationError, parse_configuration
from dstack_ray.config.task import RegistryAuth
from dstack_ray.exec.archive import UnsafeArchive, unpack
from dstack_ray.exec.commands import job_environment
from dstack_ray.exec.container import Container, ContainerSpec
from dstack_ray.exec.prepare import staged_path
from dstack_ray.exec.process import DetachedJob
from dstack_ray.exec.records import parse_records
from dstack_ray.exec.repo import RepoError, RepoPayload, materialize_repo
from dstack_ray.models.secrets import redact_url
from dstack_ray.local_head import _head_processes, ensure_auth_token
from dstack_ray.models import RunRecord, RunSpec, RunStatus
from dstack_ray.runtime.settings import RuntimeSettings
from dstack_ray.store import LogStore, Store
from dstack_ray.store.db import StoreError
from tests.helpers import no_leftovers, wait_for

SECRET = "s3cr3t-Pa$$word"


def task(**fields) -> dict:
    return {"type": "task", "commands": ["true"], **fields}


# --- 1. files destinations stay inside their root (container staging) ---------------------------


@pytest.mark.parametrize(
    ("path", "working_dir", "home"),
    [
        ("../../../../etc/cron.d/x", "/workflow", "/root"),  # `..` in files.path
        ("~/x", "/workflow", "/../../../etc"),  # a crafted image HOME
        ("x", "../../../../etc", "/root"),  # a crafted image WorkingDir
        ("/workflow/../../../../x", "/workflow", "/root"),
    ],
)
def test_container_staging_cannot_be_escaped(tmp_path, path, working_dir, home):
    with pytest.raises(ValueError, match="outside the container's filesystem"):
        staged_path(tmp_path / "stage", path, working_dir, home)


# --- 2 and 7. the container CLI: docker-compatible entrypoint, env values intact ------------------


@pytest.fixture
def recording_runtime(tmp_path):
    """A `docker` that records its argv and environment (a stand-in for the daemon)."""
    log = tmp_path / "calls.jsonl"
    script = tmp_path / "docker"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps({{'argv': sys.argv[1:], 'env': dict(os.environ)}}) + '\\n')\n"
    )
    script.chmod(0o755)
    return script, log


def test_create_passes_a_plain_entrypoint_and_env_by_name(tmp_path, recording_runtime):
    runtime, log = recording_runtime
    private = tmp_path / "private"
    private.mkdir()
    container = Container(str(runtime), ContainerSpec(image="img"), "dstack-x-0-0", private)
    env = {"PEM": "-----BEGIN-----\nline2\n-----END-----", "DSTACK_NODES_IPS": "10.0.0.1\n10.0.0.2", "TOKEN": SECRET}
    container.create(["/bin/sh", "-i", "-c", "echo hi"], env, "/workflow", [], tmp_path / "hostfile")
    create = [json.loads(line) for line in log.read_text().splitlines()][-1]
    argv = create["argv"]
    assert argv[argv.index("--entrypoint") + 1] == "/bin/sh"  # docker takes no JSON here
    assert {"--env=PEM", "--env=DSTACK_NODES_IPS", "--env=TOKEN"} <= set(argv)
    assert SECRET not in " ".join(argv)  # values never in a process list
    assert create["env"]["PEM"] == env["PEM"] and create["env"]["DSTACK_NODES_IPS"] == env["DSTACK_NODES_IPS"]
    assert not list(private.iterdir())  # no env file left behind


def test_registry_credentials_are_removed_after_the_pull(tmp_path, recording_runtime):
    runtime, _ = recording_runtime
    private = tmp_path / "private"
    private.mkdir()
    container = Container(str(runtime), ContainerSpec(image="img", registry_username="u", registry_password=SECRET), "c", private)
    container.login()
    (private / "docker").mkdir()
    (private / "docker" / "config.json").write_text(SECRET)
    container.forget_credentials()
    assert not list(private.iterdir())


# --- 3. nothing of ours is readable by others; delete deletes ------------------------------------


def spec_with_secrets() -> dict:
    cfg = task(env={"TOKEN": SECRET}, image="img", registry_auth={"username": "u", "password": SECRET})
    return RunSpec(run_name="rr", configuration=parse_configuration(cfg).model_dump(mode="json", exclude_unset=True)).model_dump(mode="json")


def record(run_id: str = "a" * 32) -> RunRecord:
    from dstack_ray.store import utcnow

    return RunRecord(id=run_id, name="r", status=RunStatus.DONE, status_message="done", submitted_at=utcnow(), last_processed_at=utcnow(), spec=spec_with_secrets())


def test_state_files_are_private_from_the_start(tmp_path):
    state = tmp_path / "state"
    store = Store(state / "state.db")
    store.save_run(record())
    LogStore(state / "logs").append("a" * 32, 0, 0, 0, b"line\n")
    for path in [state, *state.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, (path, oct(mode))
    assert stat.S_IMODE((state / "logs").stat().st_mode) == 0o700


def test_delete_removes_the_record_and_its_secret(tmp_path):
    store = Store(tmp_path / "state.db")
    run = record()
    store.save_run(run)
    store.add_event(run.id, "submitted")
    store.delete_run(run.id)
    assert store.load_runs(include_deleted=True) == [] and store.events(run.id) == []
    store.close()
    for path in tmp_path.iterdir():
        assert SECRET.encode() not in path.read_bytes(), path


def test_a_replaced_run_keeps_its_history_but_not_its_secrets(tmp_path):
    store = Store(tmp_path / "state.db")
    run = record()
    store.save_run(run)
    store.mark_deleted(run)
    (kept,) = store.load_runs(include_deleted=True)
    configuration = kept.spec.model_dump(mode="json")["configuration"]
    assert configuration["env"] == {"TOKEN": "***"}
    assert configuration["registry_auth"]["password"] == "***"
    store.close()
    for path in tmp_path.iterdir():
        assert SECRET.encode() not in path.read_bytes(), path


def test_the_ray_token_is_made_private(tmp_path, monkeypatch):
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("token")
    token.chmod(0o644)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    ensure_auth_token()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600


# --- 5 and 6. repos: no option injection, no token in messages -------------------------------------


@pytest.mark.parametrize(
    ("repo", "field"),
    [
        ({"url": "https://h/r.git", "hash": "--upload-pack=touch /tmp/x;git-upload-pack"}, "repos[0].hash"),
        ({"url": "https://h/r.git", "branch": "--upload-pack=touch /tmp/x"}, "repos[0].branch"),
        ({"url": "--upload-pack=x"}, "repos[0].url"),
    ],
)
def test_git_options_cannot_come_from_the_configuration(repo, field):
    with pytest.raises(ConfigurationError) as info:
        parse_configuration(task(repos=[repo]))
    assert info.value.issues[0].path == field


def test_the_node_refuses_an_option_as_commit(tmp_path):
    marker = tmp_path / "pwned"
    payload = RepoPayload(kind="url", url=f"file://{tmp_path}/nothing.git", commit=f"--upload-pack=touch {marker};git-upload-pack")
    with pytest.raises(RepoError, match="invalid commit hash"):
        materialize_repo(payload, tmp_path / "wd", lambda message: None)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://ghp_TOKEN123@github.com/o/r.git", "https://***@github.com/o/r.git"),
        ("https://user:ghp_TOKEN123@github.com/o/r.git", "https://user:***@github.com/o/r.git"),
        ("ssh://git@github.com/o/r.git", "ssh://git@github.com/o/r.git"),
    ],
)
def test_tokens_in_urls_are_redacted(url, shown):
    assert redact_url(f"Cloning {url} (main)") == f"Cloning {shown} (main)"


# --- 8. a head that cannot store logs does not block or corrupt them --------------------------------


def test_a_failed_append_leaves_no_half_chunk(tmp_path, monkeypatch):
    logs = LogStore(tmp_path / "logs")
    logs.append("r", 0, 0, 0, b"first\n")
    real_open = open

    class Full(io.RawIOBase):
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data[:3]))
            raise OSError(28, "No space left on device")

        def seek(self, *args):
            return self.f.seek(*args)

        def truncate(self, size=None):
            return self.f.truncate(size)

        def close(self):
            self.f.close()

    monkeypatch.setattr("builtins.open", lambda *a, **k: Full(real_open(*a, **k)))
    with pytest.raises(OSError):
        logs.append("r", 0, 0, 6, b"second\n")
    monkeypatch.setattr("builtins.open", real_open)
    assert logs.append("r", 0, 0, 6, b"third\n") == 12
    assert logs.read("r", 0, 0, 0, 100)[0] == b"first\nthird\n"


# --- 9. an unreadable record does not stop the Controller -------------------------------------------


def test_unreadable_records_are_quarantined(tmp_path):
    store = Store(tmp_path / "state.db")
    good, bad = record("a" * 32), record("b" * 32)
    store.save_run(good)
    store.save_run(bad)
    store.close()
    db = sqlite3.connect(tmp_path / "state.db")
    document = json.loads(db.execute("SELECT record FROM runs WHERE id = ?", (bad.id,)).fetchone()[0])
    document["status"] = "status-from-a-newer-version"
    db.execute("UPDATE runs SET record = ? WHERE id = ?", (json.dumps(document), bad.id))
    db.commit()
    db.close()
    reopened = Store(tmp_path / "state.db")
    assert [r.id for r in reopened.load_runs()] == [good.id]
    ((run_id, why),) = reopened.quarantined
    assert run_id == bad.id and "status" in why
    assert [r.id for r in Store(tmp_path / "state.db").load_runs()] == [good.id]  # stays set aside


def test_a_newer_schema_is_refused_clearly(tmp_path):
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="newer dstack-ray"):
        Store(tmp_path / "state.db")


# --- 10. the guard: killed, fed garbage, signal dispositions ----------------------------------------


def guarded(command: str, tmp_path, job: str):
    """The command under a guard, as node agents start them; its output is read back from the
    job's directory."""
    env = {"PATH": os.environ["PATH"], "DSTACK_JOB_ID": job}
    job_dir = tmp_path / job
    detached = DetachedJob.start(job_dir, ["/bin/sh", "-c", command], env, str(tmp_path))
    return detached, lambda: "\n".join(parse_records((job_dir / "output").read_bytes(), rank=0))


def test_sigkill_of_the_guard_ends_the_command_and_what_it_started(tmp_path):
    job = f"job-{time.time_ns()}"
    process, _ = guarded("sleep 31111 & sleep 31112; wait", tmp_path, job)
    assert wait_for(lambda: len([p for p in _pids_with(job)]) >= 3, 10)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(30) == 128 + signal.SIGKILL
    assert wait_for(lambda: not _pids_with(job), 10), _pids_with(job)


def _pids_with(job: str):
    from dstack_ray.exec.proc import processes_with

    return processes_with(f"DSTACK_JOB_ID={job}".encode())


def test_a_malformed_order_is_ignored(tmp_path):
    process, _ = guarded("sleep 31113", tmp_path, f"job-{time.time_ns()}")
    for garbage in ("stop nan", "stop -1", "stop x", "bogus", "stop 1 2"):
        process._order(garbage)
    time.sleep(0.5)
    assert not process.finished()  # the guard is alive and still guarding
    process.stop(0.5)
    assert process.wait(30) == 130  # SIGINT, as dstack's runner
    assert no_leftovers("sleep 31113", 5) == []


def test_the_command_gets_default_signal_dispositions(tmp_path):
    """A Ray worker ignores SIGHUP; the guard's fork server and guards inherit that, and the
    command must not."""
    from dstack_ray.exec.process import _ForkServer

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as a Ray worker has it
    try:
        if _ForkServer._server is not None:  # a fork server started before: one that inherits this
            _ForkServer._server.kill()
            _ForkServer._server.wait()
        process, output = guarded("grep -E '^Sig(Ign|Blk)' /proc/self/status", tmp_path, "job-sig")
        assert process.wait(30) == 0
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    text = output()
    assert "SigIgn:\t0000000000000000" in text and "SigBlk:\t0000000000000000" in text, text


# --- 11. `server stop` stops only the head's processes ------------------------------------------------


def test_server_stop_matches_the_heads_directory_only(tmp_path):
    head_dir = str(tmp_path / "dstack-ray-abc")
    lookalike = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"{head_dir}-other/x", f"x{head_dir}"])
    member = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--temp-dir={head_dir}"])
    try:
        # (right after the fork a child still shows its parent's command line)
        assert wait_for(lambda: member.pid in _head_processes(head_dir), 10)
        assert wait_for(lambda: Path(f"/proc/{lookalike.pid}/cmdline").read_bytes().count(head_dir.encode()) == 2, 10)
        assert lookalike.pid not in _head_processes(head_dir)
    finally:
        for p in (lookalike, member):
            p.kill()
            p.wait()


# --- 12. registry_auth ---------------------------------------------------------------------------------


def prepared_auth(auth: dict, env: dict | None = None, environ: dict | None = None):
    cfg = parse_configuration(task(image="img", registry_auth=auth, env=env or {}))
    return Client.prepare(cfg, environ=environ or {}).registry_auth


def test_registry_password_is_never_printed():
    auth = RegistryAuth(username="u", password=SECRET)
    assert SECRET not in str(auth) and SECRET not in repr(auth) and SECRET not in f"{auth}"


def test_registry_auth_reads_the_configurations_env_and_keeps_dollars():
    auth = prepared_auth({"username": "${{ env.USER_NAME }}", "password": SECRET}, env={"USER_NAME": "bot"}, environ={"USER_NAME": "shell"})
    assert (auth.username, auth.password) == ("bot", SECRET)  # `$$` is not turned into `$`


def test_registry_auth_secrets_are_a_clear_error():
    with pytest.raises(ConfigurationError) as info:
        prepared_auth({"username": "u", "password": "${{ secrets.TOKEN }}"})
    assert info.value.issues[0].path == "registry_auth.password" and "secrets" in info.value.issues[0].message


@pytest.mark.parametrize("password", ["abc${{ env.MISSING }}xyz-secret", "abc${{ bad name }}xyz-secret", "abc${{ env.X xyz-secret"])
def test_registry_auth_errors_do_not_echo_the_password(password):
    with pytest.raises(ConfigurationError) as info:
        prepared_auth({"username": "u", "password": password})
    assert "xyz-secret" not in str(info.value) and "abc" not in str(info.value)
    assert info.value.issues[0].path == "registry_auth.password"


# --- 13. the GPUs Ray assigned win ----------------------------------------------------------------------


def test_user_cuda_visible_devices_cannot_override_rays():
    env = job_environment({}, {}, {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, ["2"])
    assert env["CUDA_VISIBLE_DEVICES"] == "2"
    assert "CUDA_VISIBLE_DEVICES" not in job_environment({}, {}, {"CUDA_VISIBLE_DEVICES": "0"}, [])


# --- 14. accepted silently before -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"entrypoint": "python -c 'print(1)"}, "entrypoint"),
        ({"image": "--privileged"}, "image"),
        ({"image": "img", "user": "--privileged"}, "user"),
        ({"volumes": [{"instance_path": "/data", "path": "/data:ro"}]}, "volumes[0]"),
        ({"volumes": ["/data:/mnt/x,ro"]}, "volumes[0]"),
        ({"resources": {"memory": "-1GB"}}, "resources.memory"),
        ({"resources": {"cpu": -1}}, "resources.cpu"),
        ({"resources": {"shm_size": "-1GB"}}, "resources.shm_size"),
    ],
)
def test_refused_with_the_field_named(fields, field):
    with pytest.raises(ConfigurationError) as info:
        parse_configuration(task(**fields))
    assert info.value.issues[0].path.startswith(field), info.value


def test_stop_duration_is_explained_in_the_plan():
    from dstack_ray.models.cluster import ClusterView, NodeView
    from dstack_ray.plan.planner import build_plan

    cluster = ClusterView(nodes=[NodeView(node_id="a", ip="1.1.1.1", alive=True, cpus=4, memory_bytes=8 << 30)])
    notes = build_plan(parse_configuration(task(stop_duration="5m", resources={"cpu": 1})), cluster).notes
    assert any("stop_duration" in n and "SIGINT" in n for n in notes)


# --- 15. sparse archive members ----------------------------------------------------------------------------


def test_sparse_members_are_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("top/big")
        info.size = 0
        info.type = tarfile.GNUTYPE_SPARSE
        tar.addfile(info)
    with pytest.raises(UnsafeArchive, match="sparse"):
        unpack(buffer.getvalue(), tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


# --- 16. two clusters on one machine keep their runs apart ------------------------------------------------


def test_each_cluster_gets_its_own_default_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DSTACK_RAY_STATE_DIR", str(tmp_path))
    default = RuntimeSettings()
    first, second = default.state_dir_for("127.0.0.1:6391"), default.state_dir_for("127.0.0.1:6392")
    assert first != second and first.parent == second.parent == tmp_path / "clusters"
    assert RuntimeSettings(state_dir="/x").state_dir_for("127.0.0.1:6391") == Path("/x")


def test_a_runs_payload_is_capped(tmp_path, monkeypatch):
    from dstack_ray.api import pack_payload
    from dstack_ray.config import load_configuration

    for i in range(3):
        (tmp_path / f"part{i}.bin").write_bytes(os.urandom(40_000))
    config = tmp_path / "big.dstack.yml"
    config.write_text("type: task\ncommands: [\"true\"]\nfiles:\n  - part0.bin\n  - part1.bin\n  - part2.bin\n")
    monkeypatch.setenv("DSTACK_RAY_PAYLOAD_LIMIT", "100000")
    with pytest.raises(ConfigurationError, match="over the limit of 100000 bytes per run") as info:
        pack_payload(load_configuration(config))
    assert info.value.issues[0].path == "files"
    monkeypatch.setenv("DSTACK_RAY_PAYLOAD_LIMIT", "0")
    assert len(pack_payload(load_configuration(config)).files) == 3
