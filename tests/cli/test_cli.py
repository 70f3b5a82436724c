"""End-to-end CLI tests: real processes, the embedded local Ray head, dstack's verbs and output."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dstack_ray.exec.view import node_layout

from tests.cli.conftest import CLI, write_task
from tests.helpers import AttachedApply, no_leftovers, wait_for

SMALL = "resources:\n  cpu: 1\n  memory: 256MB\n"


def test_server_status_and_token_auth(cli):
    status = cli("server", "status", check_rc=0)
    assert "running at 127.0.0.1:" in status.stdout
    home = Path(cli.env["HOME"])
    assert (home / ".ray" / "auth_token").exists()
    log = (home / ".dstack-ray" / "local-head.log").read_text()
    assert "Token authentication is disabled" not in log


def test_apply_prints_the_plan_and_streams_the_output(cli):
    write_task(cli.cwd, "ok", f"type: task\nname: cli-ok\ncommands:\n  - echo hello from the cli\n  - echo second line\n{SMALL}")
    result = cli("apply", "-f", "ok.dstack.yml", "-y", check_rc=0)
    assert "task (nodes=1)" in result.stdout
    assert "Retry policy" in result.stdout and "cpu=x86:1 mem=0.25GB" in result.stdout
    assert "hello from the cli\nsecond line\n" in result.stdout
    assert "Traceback" not in result.stderr


def test_the_seed_files_block_runs_in_dstacks_layout_without_an_image(cli):
    """The seed's `files` block — `.:examples` and `~/.ssh/id_rsa:/root/.ssh/id_rsa` (a stand-in
    key in the CLI's HOME) — and an absolute target elsewhere, on a node that gives jobs a view:
    the job starts in `/workflow`, its home is `/root`, the plan says which layout it gets, and
    the node's own `/root` and `/opt` are untouched (these used to be refused before submission)."""
    if not node_layout().view:
        pytest.skip("this machine gives no private mount namespace: tests/unit/test_view.py covers the fallback")
    home = Path(cli.env["HOME"])
    (home / ".ssh").mkdir(exist_ok=True)
    (home / ".ssh" / "id_rsa").write_text("STAND-IN KEY\n")
    (cli.cwd / "readme.txt").write_text("hello\n")
    (cli.cwd / "app.conf").write_text("conf\n")
    write_task(
        cli.cwd, "seed",
        "type: task\nname: seed-files\nfiles:\n  - .:examples\n  - ~/.ssh/id_rsa:/root/.ssh/id_rsa\n  - app.conf:/opt/dstack-ray-seed/app.conf\n"
        "commands:\n  - pwd\n  - echo $HOME\n  - cat /root/.ssh/id_rsa\n  - cat /workflow/examples/readme.txt\n  - cat /opt/dstack-ray-seed/app.conf\n"
        + SMALL,
    )
    node_root = sorted(os.listdir("/root"))
    result = cli("apply", "-f", "seed.dstack.yml", "-y", check_rc=0)
    assert "Layout" in result.stdout and "dstack's layout (/workflow, /root)" in result.stdout
    assert "/workflow\n/root\nSTAND-IN KEY\nhello\nconf\n" in result.stdout
    assert sorted(os.listdir("/root")) == node_root and not os.path.exists("/opt/dstack-ray-seed")


def test_apply_exit_code_follows_the_run(cli):
    write_task(cli.cwd, "bad", f"type: task\nname: cli-bad\ncommands:\n  - echo failing\n  - exit 4\n{SMALL}")
    result = cli("apply", "-f", "bad.dstack.yml", "-y", check_rc=1)
    assert "failing" in result.stdout
    listed = json.loads(cli("ps", "-a", "--json", check_rc=0).stdout)
    bad = next(r for r in listed if r["name"] == "cli-bad")
    assert bad["status"] == "failed" and bad["status_message"] == "exited (4)"
    assert bad["jobs"][0]["exit_code"] == 4


def test_detach_then_ps_logs_and_stop_from_other_processes(cli):
    write_task(cli.cwd, "long", f"type: task\nname: cli-long\ncommands:\n  - echo started\n  - sleep 31360\n{SMALL}")
    cli("apply", "-f", "long.dstack.yml", "-y", "-d", check_rc=0)
    assert wait_for(lambda: "running" in cli("ps").stdout, 60)
    ps = cli("ps", "-v", check_rc=0).stdout
    assert "cli-long" in ps and "INSTANCE TYPE" in ps and "ERROR" in ps
    follower = subprocess.Popen([*CLI, "logs", "cli-long", "-f"], env=cli.env, stdout=subprocess.PIPE, text=True)
    assert follower.stdout.readline() == "started\n"
    stopped = cli("stop", "cli-long", "-y", check_rc=0)
    assert "stopped" in stopped.stdout
    assert follower.wait(60) == 0  # the follow ends with the run
    assert "stopped" in cli("ps", "-a").stdout
    assert no_leftovers("sleep 31360") == []


def test_env_and_args(cli):
    write_task(
        cli.cwd,
        "env",
        "type: task\nname: cli-env\nenv:\n  - TOKEN\n  - MODE=default\ncommands:\n"
        "  - echo mode=$MODE token-length=${#TOKEN}\n  - echo args=${{ run.args }}\n"
        "  - echo 'lit $${{ run.args }} $$$${{ run.args }}'\n" + SMALL,
    )
    missing = cli("apply", "-f", "env.dstack.yml", "-y")
    assert missing.returncode == 1
    assert "TOKEN" in missing.stderr and "not set" in missing.stderr and "Traceback" not in missing.stderr
    result = cli("apply", "-f", "env.dstack.yml", "-y", "-e", "TOKEN=s3cr3t-value", "-e", "MODE=cli", "--", "--epochs", "3", check_rc=0)
    assert "mode=cli token-length=12" in result.stdout
    assert "args=--epochs 3" in result.stdout
    # dstack's escape is undone once: the configuration is prepared once per apply.
    assert "lit ${{ run.args }} $${{ run.args }}" in result.stdout.splitlines(), result.stdout
    # Env values from the command line appear in no plan, listing or log of ours.
    assert "s3cr3t-value" not in result.stdout + result.stderr
    assert "s3cr3t-value" not in cli("ps", "-a", "--json").stdout
    state = Path(cli.env["DSTACK_RAY_STATE_DIR"])
    for path in state.rglob("*.log"):
        assert b"s3cr3t-value" not in path.read_bytes(), path


def test_errors_are_one_readable_line(cli):
    write_task(cli.cwd, "broken", "type: task\ncommands:\n  - echo hi\nresources:\n  gpu: \"2:3\"\n")
    config = cli("apply", "-f", "broken.dstack.yml", "-y")
    assert config.returncode == 1
    assert "broken.dstack.yml:5: resources.gpu: GPU spec count conflict" in config.stderr
    missing = cli("logs", "no-such-run")
    assert missing.returncode == 1 and "run no-such-run not found" in missing.stderr
    unreachable = cli("ps", "--address", "127.0.0.1:1", timeout=120)
    assert unreachable.returncode == 1 and "cannot connect" in unreachable.stderr.lower()
    for result in (config, missing, unreachable):
        assert "Traceback" not in result.stderr


def http_task(cli, name: str, port: int) -> None:
    write_task(
        cli.cwd,
        name,
        f"type: task\nname: {name}\nports:\n  - {port}\ncommands:\n"
        "  - mkdir -p site && head -c 6000000 /dev/urandom > site/data.bin && sha256sum site/data.bin\n"
        f"  - cd site && python3 -m http.server {port} --bind 0.0.0.0\n" + SMALL,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_forwarding(cli, name: str, port: int, local: int, extra_env: dict | None = None) -> None:
    env = dict(cli.env, **(extra_env or {}))
    attach = subprocess.Popen(
        [*CLI, "attach", name, "--logs", "-p", f"{local}:{port}"],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        expected = None
        deadline = time.time() + 60
        while expected is None and time.time() < deadline:
            line = attach.stdout.readline()
            if "site/data.bin" in line:
                expected = line.split()[0]
        assert expected, "the task did not print its checksum"

        def fetch(_: int) -> str:
            for _ in range(100):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{local}/data.bin", timeout=30) as response:
                        return hashlib.sha256(response.read()).hexdigest()
                except OSError:
                    time.sleep(0.2)
            raise AssertionError("no answer through the forwarded port")

        with ThreadPoolExecutor(4) as pool:
            digests = list(pool.map(fetch, range(6)))
        assert digests == [expected] * 6
    finally:
        attach.send_signal(signal.SIGINT)
        out, err = attach.communicate(input="n\n", timeout=60)
    assert "Stop the run before detaching?" in out + err
    assert "Detached" in err


def test_attach_forwards_ports_directly_and_through_the_service(cli):
    port = free_port()
    http_task(cli, "cli-http", port)
    cli("apply", "-f", "cli-http.dstack.yml", "-y", "-d", check_rc=0)
    check_forwarding(cli, "cli-http", port, free_port())
    check_forwarding(cli, "cli-http", port, free_port(), {"DSTACK_RAY_PORT_RELAY": "always"})
    # The local side listens on loopback only.
    local = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", local))
        taken.listen()
        busy = cli("attach", "cli-http", "-p", f"{local}:{port}")
    assert busy.returncode == 1
    assert f"port {local} is already in use" in busy.stderr and "-p" in busy.stderr
    cli("stop", "cli-http", "-y", check_rc=0)


def test_ctrl_c_can_stop_the_run(cli):
    write_task(cli.cwd, "ctrlc", f"type: task\nname: cli-ctrlc\ncommands:\n  - echo up\n  - sleep 31361\n{SMALL}")
    apply = subprocess.Popen(
        [*CLI, "apply", "-f", "ctrlc.dstack.yml", "-y"],
        env=cli.env, cwd=cli.cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert wait_for(lambda: "sleep 31361" in " ".join(p for p in _cmdlines()), 60)
    time.sleep(0.5)
    apply.send_signal(signal.SIGINT)
    out, err = apply.communicate(input="y\n", timeout=90)
    assert "Stop the run before detaching?" in out + err
    assert apply.returncode == 1
    assert "stopped" in cli("ps", "-a").stdout
    assert no_leftovers("sleep 31361") == []


def _cmdlines():
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                pass


def test_metrics_and_events(cli):
    write_task(cli.cwd, "quick", f"type: task\nname: cli-quick\ncommands:\n  - echo quick\n{SMALL}")
    cli("apply", "-f", "quick.dstack.yml", "-y", check_rc=0)
    events = cli("events", "cli-quick", check_rc=0).stdout
    assert "submitted" in events and "run done" in events
    metrics = cli("metrics", "cli-quick", check_rc=0)
    assert "No metrics for cli-quick yet" in metrics.stdout or "CPU" in metrics.stdout
    busy = "type: task\nname: cli-busy\ncommands:\n  - |\n    python3 -c \"import time; data = b'x' * (300 << 20); end = time.time() + 15; [None for _ in iter(lambda: time.time() < end, False)]\"\n" + SMALL
    write_task(cli.cwd, "busy", busy)
    cli("apply", "-f", "busy.dstack.yml", "-y", "-d", check_rc=0)
    shown = []

    def busy_sampled() -> bool:
        shown.append(cli("metrics", "cli-busy").stdout)
        rows = [line.split() for line in shown[-1].splitlines() if line.strip().startswith("0 ")]
        return bool(rows) and rows[0][2] != "-" and int(rows[0][2].rstrip("%")) >= 50 and float(rows[0][3].split("GB")[0]) >= 0.2

    assert wait_for(busy_sampled, 60, interval=2), shown[-1:]
    assert shown[-1].split()[:5] == ["JOB", "STATUS", "CPU", "MEMORY", "GPU"]


def test_delete(cli):
    write_task(cli.cwd, "del", f"type: task\nname: cli-del\ncommands:\n  - echo x\n{SMALL}")
    cli("apply", "-f", "del.dstack.yml", "-y", check_rc=0)
    cli("delete", "cli-del", "-y", check_rc=0)
    assert "cli-del" not in cli("ps", "-a").stdout


def test_hostile_configurations_get_clear_errors_and_the_head_keeps_working(cli):
    """65 hostile or odd configurations through load -> plan -> apply on the embedded head:
    each is a clear error naming its field (and line), or a documented acceptance that runs;
    no traceback, and the Controller still admits a run afterwards."""
    from tests.cli.bad_inputs import CASES

    repo_root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "tests.cli.bad_inputs", str(cli.cwd)],
        env=cli.env, cwd=repo_root, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = {entry["case"]: entry for entry in map(json.loads, result.stdout.splitlines())}
    assert len(CASES) >= 60
    for case, body, expected, field in CASES:
        got = outcomes[case]
        assert got["outcome"] == expected, (case, got)
        if expected == "error":
            assert got["field"].startswith(field), (case, got)
            assert "Traceback" not in got["message"] and got["message"].strip(), (case, got)
            if field and got["line"] is None and not case.startswith("files-missing"):
                raise AssertionError(f"{case}: no line named: {got}")
    assert outcomes["env-multiline"]["logs"] == ["2"]
    assert outcomes["files-home"]["logs"] == ["data"]
    assert outcomes["working-dir-relative"]["logs"][0].endswith("/workflow/sub")
    home = "/root" if node_layout().view else "/home"  # dstack's home in the job's view, else the run's `home/`
    assert outcomes["working-dir-home"]["logs"][0].endswith(f"{home}/w")
    assert outcomes["dollar-dollar"]["logs"] == ["pid-ok"]
    assert outcomes["cuda-in-env"]["logs"] == ["none"]  # Ray assigned no GPU: none is visible
    assert outcomes["unicode-env"]["logs"] == ["héllo ✓"]
    assert outcomes["after-the-table"] == {"case": "after-the-table", "outcome": "done", "logs": ["admitted"]}


def test_hostile_input_never_shows_a_traceback_in_the_cli(cli):
    for name, body in [
        ("huge", "type: task\ncommands: [\"true\"]\nresources:\n  memory: 1e300\n"),
        ("inf", "type: task\ncommands: [\"true\"]\nresources:\n  memory: .inf\n"),
        ("inject", "type: task\ncommands: [\"true\"]\nrepos:\n  - url: https://example.com/r.git\n    hash: \"--upload-pack=touch /tmp/x\"\n"),
    ]:
        write_task(cli.cwd, name, body)
        result = cli("apply", "-f", f"{name}.dstack.yml", "-y", "-d")
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        assert f"{name}.dstack.yml:" in result.stderr, result.stderr


def test_local_head_keeps_token_auth_and_private_files(cli):
    import stat

    home = Path(cli.env["HOME"])
    token = home / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    state = Path(cli.env["DSTACK_RAY_STATE_DIR"])
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for path in state.rglob("state.db*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    info = json.loads((state / "local-head.json").read_text())
    assert info["auth"] is True and Path(info["temp_dir"]).name.startswith("dstack-ray")


def test_a_progress_bar_redraws_live_in_the_terminal(cli):
    """Under tmux, as a user watches it: `apply` shows a `\\r` progress bar updating while the
    task still runs (the pane shows a middle step before the task's last line)."""
    import os

    write_task(cli.cwd, "progress", "type: task\nname: progress\ncommands:\n  - for i in $(seq 1 20); do printf '\\rprogress %d/20' $i; sleep 0.3; done; echo; echo finished\nresources:\n  cpu: 1\n  memory: 0..\n")
    socket = f"dstack-ray-test-{os.getpid()}"
    tmux = ["tmux", "-L", socket]
    # The pane stays after the CLI exits (it exits right after the last line: no Ray to shut down).
    command = " ".join([*CLI, "apply", "-f", "progress.dstack.yml", "-y"]) + "; sleep 120"
    subprocess.run([*tmux, "new-session", "-d", "-s", "live", "-x", "160", "-y", "40", "-c", str(cli.cwd), command], env=cli.env, check=True, timeout=30)
    try:
        screens = []

        def screen() -> str:
            text = subprocess.run([*tmux, "capture-pane", "-p", "-t", "live"], capture_output=True, text=True, timeout=10).stdout
            screens.append(text)
            return text

        def mid_progress() -> bool:
            text = screen()
            steps = [int(step) for step in __import__("re").findall(r"progress (\d+)/20", text)]
            return bool(steps) and 2 <= steps[-1] < 20 and "finished" not in text

        assert wait_for(mid_progress, 120, interval=0.2), screens[-1:]
        assert wait_for(lambda: "finished" in screen(), 60, interval=0.5), screens[-1:]
        final = screens[-1]
        assert "progress 20/20" in final and len(__import__("re").findall(r"progress \d+/20", final)) == 1  # redrawn in place
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=30)


def test_no_offers_is_refused_before_submission(cli):
    write_task(cli.cwd, "toolarge", "type: task\nname: toolarge\ncommands: [\"true\"]\nresources:\n  gpu: H100:8\n")
    result = cli("apply", "-f", "toolarge.dstack.yml", "-y")
    assert result.returncode == 1
    assert "No offers: no node of this cluster can hold the run (" in result.stderr and "8 GPUs" in result.stderr
    assert "toolarge" not in cli("ps", "-a").stdout  # nothing was submitted


def test_closing_line_and_diagnosis(cli):
    write_task(cli.cwd, "fails", "type: task\nname: fails\ncommands:\n  - echo working\n  - exit 3\nresources:\n  cpu: 1\n  memory: 0..\n")
    result = cli("apply", "-f", "fails.dstack.yml", "-y")
    assert result.returncode == 1
    assert "working" in result.stdout
    assert "Run fails failed (exited (3))" in result.stderr
    assert "dstack-ray logs fails -d" in result.stderr
    diagnosis = cli("logs", "fails", "-d", check_rc=0).stdout
    assert "ATTEMPT" in diagnosis and "container_exited_with_error" in diagnosis and " 3 " in diagnosis
    assert "submitted (1 node(s))" in diagnosis
    done = cli("apply", "-f", write_task(cli.cwd, "fine", "type: task\nname: fine\ncommands: [\"echo ok\"]\nresources:\n  cpu: 1\n  memory: 0..\n").name, "-y")
    assert done.returncode == 0 and "Run fine is done (exited (0))" in done.stderr


def test_delete_by_configuration_file(cli):
    path = write_task(cli.cwd, "delf", f"type: task\nname: cli-delf\ncommands:\n  - echo x\n{SMALL}")
    cli("apply", "-f", path.name, "-y", check_rc=0)
    cli("delete", "-f", path.name, "-y", check_rc=0)
    assert "cli-delf" not in cli("ps", "-a").stdout
    both = cli("delete", "cli-delf", "-f", path.name, "-y")
    assert both.returncode == 1 and "one of them" in both.stderr


def test_offer_without_a_file_and_grouped(cli):
    listed = json.loads(cli("offer", "--cpu", "1", "--memory", "0..", "--json", check_rc=0).stdout)
    assert listed["requirements"]["resources"]["cpu"]["count"] == {"min": 1, "max": 1}
    assert listed["total_offers"] >= 1 and listed["offers"][0]["backend"].startswith("ray")
    grouped = cli("offer", "--cpu", "1", "--memory", "0..", "--group-by", "gpu,backend", check_rc=0).stdout
    assert "GPU" in grouped and "BACKEND" in grouped and "OFFERS" in grouped
    none = cli("offer", "--gpu", "H100:8", check_rc=0).stdout
    assert "No matching instance offers" in none or "no offers" in none.lower()
    bad = cli("offer", "--group-by", "backend")
    assert bad.returncode == 1 and "--group-by backend" in bad.stderr


def test_apply_profile_flags_are_checked_and_noted_in_the_plan(cli):
    write_task(cli.cwd, "flags", f"type: task\nname: cli-flags\ncommands: [\"echo flags\"]\n{SMALL}")
    conflict = cli("apply", "-f", "flags.dstack.yml", "-y", "--spot", "--on-demand")
    assert conflict.returncode == 1 and "exclude each other" in conflict.stderr
    result = cli("apply", "-f", "flags.dstack.yml", "-y", "-b", "aws", "-r", "us-east-1", "--max-price", "1.5", "--max-offers", "1", check_rc=0)
    assert "flags" in result.stdout
    plan = result.stdout
    assert "Max price" in plan and "$1.5" in plan, plan
    assert "backends is used for offers only" in plan and "max_price is used for offers only" in plan, plan


def test_an_attached_apply_leaves_the_jobs_port_to_the_job_on_this_machine(cli):
    """dstack's http.server example on the embedded head: the job binds its port on this very
    machine, so apply binds nothing there (it used to, first: `Address already in use`), says so,
    says once when the port answers, and prints no warning while the app starts."""
    port = free_port()
    write_task(cli.cwd, "cli-web", f"type: task\nname: cli-web\nports:\n  - {port}\ncommands:\n  - sleep 2\n  - python3 -m http.server {port}\n" + SMALL)
    apply = AttachedApply(["-f", "cli-web.dstack.yml", "-y"], cli.env, cli.cwd, cli.cwd / "apply.out")
    try:
        apply.wait_for_line("answers", 90)
        assert any(f"Port {port} of the run is on this machine" in line for line in apply.said), apply.said
        assert any(f"Port {port} answers: http://127.0.0.1:{port}" in line for line in apply.said), apply.said
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200
    finally:
        out = apply.stop_the_run(timeout=120)
    assert not any("WARNING" in line or "Address already in use" in line for line in apply.said), apply.said
    assert "Address already in use" not in out
