"""Tasks with `image`: podman containers on Ray nodes."""

from __future__ import annotations

import subprocess
import textwrap

from dstack_ray.models import JobTerminationReason, RunStatus
from tests.containers.conftest import IMAGE, SSHD_IMAGE
from tests.helpers import no_leftovers, processes_matching, wait_for

SMALL = {"cpu": 1, "memory": "256MB"}


def task(name, commands=None, **extra):
    body = {"type": "task", "name": name, "image": IMAGE, "resources": dict(SMALL), **extra}
    if commands is not None:
        body["commands"] = commands
    return body


def output(run, rank=0) -> list:
    """The command's lines, without the banner busybox's interactive `sh -i` prints first."""
    lines = list(run.logs(rank=rank))
    for index, line in enumerate(lines):
        if line.startswith("Enter 'help'"):
            lines = lines[index + 1 :]
            break
    while lines and lines[0] == "":
        lines.pop(0)
    return lines


def containers_named(prefix: str) -> list:
    out = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True)
    return [name for name in out.stdout.split() if name.startswith(prefix)]


def write_config(directory, name, body: str):
    path = directory / f"{name}.dstack.yml"
    path.write_text(textwrap.dedent(body))
    return path


def test_env_working_dir_mounts_and_files(client, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "host.txt").write_text("from the host\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "data.txt").write_text("shipped data\n")
    (project / "ignored.log").write_text("must not arrive\n")
    (project / ".gitignore").write_text("*.log\n")
    (tmp_path / "single.txt").write_text("single file\n")
    config = write_config(
        tmp_path,
        "image-env",
        f"""
        type: task
        name: image-env
        image: {IMAGE}
        env:
          - GREETING=hi
        files:
          - project
          - single.txt:/opt/elsewhere/single.txt
          - single.txt:~/in-home.txt
        volumes:
          - {shared}:/shared
        commands:
          - pwd
          - echo $GREETING $IMAGE_VAR rank=$DSTACK_NODE_RANK nodes=$DSTACK_NODES_NUM
          - echo workdir=$DSTACK_WORKING_DIR hostfile=$DSTACK_MPI_HOSTFILE
          - cat $DSTACK_MPI_HOSTFILE
          - cat project/data.txt /opt/elsewhere/single.txt ~/in-home.txt /shared/host.txt /opt/image-data/kept.txt
          - ls project
          - echo container-side > /shared/written.txt
        resources:
          cpu: 1
          memory: 256MB
        """,
    )
    run = client.apply(config)
    assert run.wait(120) == RunStatus.DONE, run.events()
    lines = output(run)
    ip = run.jobs[0].node_ip
    assert lines[0] == "/workflow"
    assert lines[1] == "hi from-image rank=0 nodes=1"
    assert lines[2] == "workdir=/workflow hostfile=/dstack/mpi/hostfile"
    assert lines[3] == ip
    assert lines[4:9] == ["shipped data", "single file", "single file", "from the host", "from the image"]
    assert lines[9:] == ["data.txt"]  # ignored.log stayed home (.gitignore); ls hides dotfiles
    assert (shared / "written.txt").read_text() == "container-side\n"
    assert containers_named("dstack-image-env") == []  # removed after the run


def test_custom_working_dir_user_and_exit_code(client):
    run = client.apply(task("image-exit", ["pwd", "id -u", "exit 5"], working_dir="/home/app/work", user="1000"))
    assert run.wait(120) == RunStatus.FAILED
    assert run.status_message == "exited (5)"
    assert output(run)[:2] == ["/home/app/work", "1000"]
    assert containers_named("dstack-image-exit") == []


def test_image_default_command(client):
    run = client.apply(task("image-cmd"))
    assert run.wait(120) == RunStatus.DONE
    assert list(run.logs()) == ["image default command"]


def test_entrypoint(client):
    run = client.apply(task("image-entry", ["entrypoint args"], entrypoint="/bin/echo from"))
    assert run.wait(120) == RunStatus.DONE
    assert list(run.logs()) == ["from entrypoint args"]


def test_shm_size_and_privileged(client):
    run = client.apply(task("image-shm", ["df -k /dev/shm | tail -1", "cat /proc/self/status | grep CapEff"], privileged=True, resources={**SMALL, "shm_size": "64MB"}))
    assert run.wait(120) == RunStatus.DONE
    shm, caps = output(run)
    assert shm.split()[1] == "65536"
    assert caps.split()[1] != "00000000a80425fb"  # privileged: more than the default capabilities


def test_stop_removes_the_container(client):
    run = client.apply(task("image-stop", ["echo up", "sleep 31370"]))
    assert wait_for(lambda: "up" in list(run.logs()), 120)
    assert containers_named("dstack-image-stop")
    run.stop()
    assert run.wait(60) == RunStatus.TERMINATED
    assert wait_for(lambda: containers_named("dstack-image-stop") == [], 30)
    assert no_leftovers("sleep 31370") == []


def test_abort_removes_the_container(client):
    run = client.apply(task("image-abort", ["trap '' INT TERM", "echo up", "sleep 31371"]))
    assert wait_for(lambda: "up" in list(run.logs()), 120)
    run.stop(abort=True)
    assert run.wait(60) == RunStatus.TERMINATED
    assert wait_for(lambda: containers_named("dstack-image-abort") == [], 30)
    assert no_leftovers("sleep 31371") == []


def test_two_containers_talk_over_the_node_ip(client):
    run = client.apply(
        task(
            "image-pair",
            [
                'if [ "$DSTACK_NODE_RANK" = 0 ]; then echo "hello from master" | nc -l -p 29871; echo served;'
                ' else sleep 1; for i in 1 2 3 4 5 6 7 8 9 10; do nc $DSTACK_MASTER_NODE_IP 29871 && break; sleep 1; done; fi',
            ],
            nodes=2,
            startup_order="master-first",
        )
    )
    assert run.wait(120) == RunStatus.DONE, run.events()
    assert output(run, 0) == ["served"]
    assert output(run, 1) == ["hello from master"]
    assert len({j.node_id for j in run.jobs}) == 2


def test_registry_password_stays_out_of_sight(client, settings):
    secret = "p4ss-w0rd-31372"
    run = client.apply(task("image-auth", ["echo up", "sleep 3"], registry_auth={"username": "me", "password": secret}))
    seen = []
    while not run.refresh().status.is_finished():
        seen += processes_matching(secret)
    assert run.status == RunStatus.DONE
    assert seen == []
    assert secret not in "\n".join(run.logs())
    assert all(secret not in message for _, message in run.events())


def test_pull_failure_is_a_creating_container_error(client):
    run = client.apply(task("image-missing", ["true"], image="localhost/no-such-image:latest", registry_auth={"username": "me", "password": "hidden-31373"}))
    assert run.wait(120) == RunStatus.FAILED
    job = run.jobs[0]
    assert job.termination_reason == JobTerminationReason.CREATING_CONTAINER_ERROR
    assert "hidden-31373" not in (job.termination_message or "")
    assert run.error == "runner error"


def test_node_without_the_runtime_fails_clearly(client, settings):
    from dstack_ray import Client

    docker_only = Client(settings=settings.model_copy(update={"container_runtime": "no-such-runtime"}))
    run = docker_only.apply(task("image-noruntime", ["true"]))
    assert run.wait(60) == RunStatus.FAILED
    job = run.jobs[0]
    assert job.termination_reason == JobTerminationReason.CREATING_CONTAINER_ERROR
    assert "container runtime (no-such-runtime)" in job.termination_message


def test_python_venv_on_the_host(client):
    run = client.apply({"type": "task", "name": "host-python", "python": "3.11", "resources": SMALL,
                        "commands": ["python --version", 'python -c "import sys; print(sys.prefix != sys.base_prefix)"', "echo $DSTACK_VENV_DIR"]})
    assert run.wait(180) == RunStatus.DONE, run.events()
    version, in_venv, venv = output(run)
    assert version.startswith("Python 3.11") and in_venv == "True" and venv.endswith("/attempt-0/venv")


def test_missing_python_version_is_a_clear_error(client):
    run = client.apply({"type": "task", "name": "host-python-missing", "python": "3.14", "resources": SMALL, "commands": ["true"]})
    assert run.wait(180) == RunStatus.FAILED
    job = run.jobs[0]
    assert job.termination_reason == JobTerminationReason.EXECUTOR_ERROR
    assert "Python 3.14 is not available on node" in job.termination_message


def test_default_image_runs_tasks_without_image(cluster, settings, tmp_path):
    """A cluster default image: a task without `image` runs in it exactly as an `image:` task,
    and host-mode path rules no longer apply (the plan says where it runs)."""
    from dstack_ray import Client

    client = Client(settings=settings.model_copy(update={"default_image": IMAGE}))
    (tmp_path / "notes.txt").write_text("into the image\n")
    config = write_config(
        tmp_path,
        "default-image",
        """
        type: task
        name: default-image
        shell: sh  # a task without `image` defaults to bash, which busybox lacks
        resources:
          cpu: 1
          memory: 256MB
        files:
          - notes.txt:/opt/notes.txt
        commands:
          - cat /opt/notes.txt /opt/image-data/kept.txt
          - echo "var=$IMAGE_VAR"
        """,
    )
    cfg = client.load(config)
    assert client.plan(cfg).notes[0] == f"no `image`: runs in the cluster's default image {IMAGE}"
    run = client.apply(config)
    assert run.wait(120) == RunStatus.DONE, (run.events(), run.jobs[0].termination_message)
    assert output(run) == ["into the image", "from the image", "var=from-image"]
    assert containers_named("dstack-default-image") == []


def test_ssh_between_containers_with_the_images_sshd(client, settings):
    """Multi-node containers: the image's sshd runs with the run key on a free port of the node
    (host networking); `ssh node-<rank>` and `ssh <ip>` work from the image user's home."""
    probe = 'ssh node-1 "echo from-rank-1" && ssh "$DSTACK_MASTER_NODE_IP" true && echo by-ip'
    run = client.apply(
        {
            "type": "task", "name": "image-ssh", "image": SSHD_IMAGE, "nodes": 2, "resources": SMALL,
            "startup_order": "workers-first", "stop_criteria": "master-done",
            "commands": [f'if [ "$DSTACK_NODE_RANK" = 0 ]; then {probe}; else sleep 120; fi'],
        }
    )
    assert run.wait(180) == RunStatus.DONE, ([m for _, m in run.events()], [(j.status, j.termination_reason, j.termination_message) for j in run.jobs], output(run))
    assert output(run)[-2:] == ["from-rank-1", "by-ip"]
    assert containers_named("dstack-image-ssh") == []
    assert no_leftovers("/dstack/ssh/sshd_config") == []


def test_image_without_sshd_still_runs_and_says_so(client):
    run = client.apply(task("image-nossh", ['echo "rank $DSTACK_NODE_RANK"'], nodes=2))
    assert run.wait(180) == RunStatus.DONE, run.events()
    assert any("SSH between nodes is unavailable: the image has no sshd" in message for _, message in run.events())


def test_docker_and_podman_run_containers_alike(cluster, settings):
    """The same tasks through docker (a real dockerd of this tier) and through podman:
    entrypoint, commands, env values with newlines, user, working dir and exit codes."""
    import shutil

    from dstack_ray import Client

    assert shutil.which("docker") and shutil.which("dockerd"), "scripts/install-system.sh installs docker.io"
    outputs = {}
    for runtime in ("podman", "docker"):
        client = Client(settings=settings.model_copy(update={"container_runtime": runtime}))
        shell_run = client.apply(
            task(f"alike-{runtime}", ['printf "[%s]\\n" "$MULTI"', "pwd", "id -u", "echo $DSTACK_NODES_IPS | wc -l", "exit 3"],
                 env={"MULTI": "line one\nline two"}, working_dir="/home/app/work", user="1000")
        )
        entry_run = client.apply(task(f"alike-entry-{runtime}", ["from", "entrypoint"], entrypoint="/bin/echo"))
        assert shell_run.wait(120) == RunStatus.FAILED and shell_run.status_message == "exited (3)", shell_run.events()
        assert entry_run.wait(120) == RunStatus.DONE, (entry_run.events(), entry_run.jobs[0].termination_message)
        outputs[runtime] = (output(shell_run), list(entry_run.logs()))
        assert containers_named(f"dstack-alike-{runtime}") == []
    assert outputs["docker"] == outputs["podman"]
    assert outputs["podman"] == (["[line one", "line two]", "/home/app/work", "1000", "1"], ["from entrypoint"])


def test_no_secret_is_readable_or_visible(client, settings, tmp_path):
    """After a run with a registry password and a secret env value: the state dir and the run's
    files are private, and the secrets appear in no process list, event or log of ours."""
    import stat
    from pathlib import Path

    password, value = "reg-Pa55-7391", "env-S3cret-7391"
    run = client.apply(task("perm-check", ["echo up", "sleep 2"], env={"API_KEY": value}, registry_auth={"username": "me", "password": password}))
    seen = []
    assert wait_for(lambda: seen.append(" ".join(processes_matching(""))) or run.refresh().status.is_finished(), 120)
    assert run.wait(60) == RunStatus.DONE, run.events()
    assert all(password not in text and value not in text for text in seen)
    state = Path(settings.state_dir)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for path in [state / "state.db", *state.glob("state.db-*"), *state.rglob("*.log"), *state.rglob("payloads/*")]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    for path in state.rglob("*"):
        if path.is_file() and path.suffix != ".db" and "state.db" not in path.name:
            data = path.read_bytes()
            assert password.encode() not in data, path  # auth.json is gone after the pull
    events = " ".join(message for _, message in run.events())
    assert password not in events and value not in events
