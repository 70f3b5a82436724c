"""dstack's documented examples that need no GPU, image pull or model download, run unchanged:
batch ones end `done` with their output; servers answer HTTP on their declared port while apply
stays attached, then stop when asked (Ctrl+C, "stop the run": yes).

Left out, by reading them: the GPU and image examples, `dstack: true` (needs dstack's server),
the qlora trainers (a model download), the named-volume and commands-less volume snippets, and
the 4-node Ray cluster (four nodes do not fit on one local head; `tests/multihost` runs
multi-node examples)."""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import List

import pytest

from tests.dstack_examples.conftest import CLI, EXAMPLES, local_package_sources, local_wheel

BATCH = {
    "007-examples-misc-airflow-dags-dstack-repo-task-dstack.dstack.yml": ["Running dstack task via Airflow", "Finished"],
    "082-mkdocs-docs-guides-cli-api.dstack.yml": ["hello world"],
    "103-mkdocs-docs-reference-env.dstack.yml": ["vscode"],  # echo $DSTACK_RUN_NAME
}
# Streamlit asks for an e-mail on a terminal and reports usage: both off, as a user would set them.
STREAMLIT = ["-e", "STREAMLIT_SERVER_HEADLESS=true", "-e", "STREAMLIT_BROWSER_GATHER_USAGE_STATS=false"]
SERVERS = {
    "008-examples-misc-http-server-task-dstack.dstack.yml": (8000, []),
    "009-examples-misc-jupyterlab-dstack.dstack.yml": (8888, []),
    "035-mkdocs-docs-concepts-tasks.dstack.yml": (8501, STREAMLIT),
    "099-mkdocs-docs-guides-protips.dstack.yml": (8888, []),
    "100-mkdocs-docs-guides-protips.dstack.yml": (8501, STREAMLIT),
}
# What a server example needs from the local package sources besides its own package: the
# streamlit examples ask for `python: 3.12`, and streamlit needs numpy built for it.
NEEDS_WHEEL = {"035-mkdocs-docs-concepts-tasks.dstack.yml": "numpy-*-cp312-*.whl", "100-mkdocs-docs-guides-protips.dstack.yml": "numpy-*-cp312-*.whl"}


@pytest.mark.parametrize("name", sorted(BATCH))
def test_a_batch_example_ends_done_with_its_output(head_env, name, tmp_path):
    applied = subprocess.run([*CLI, "apply", "-f", str(EXAMPLES / name), "-y"], env=head_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    lines = [line.strip() for line in applied.stdout.splitlines()]
    for expected in BATCH[name]:
        assert expected in lines, applied.stdout
    assert "is done" in applied.stderr


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_a_server_example_answers_on_its_port_while_attached(head_env, name, tmp_path):
    port, extra = SERVERS[name]
    wheel = NEEDS_WHEEL.get(name)
    if wheel and not local_wheel(wheel):
        pytest.skip(f"this machine's local package index has no {wheel}: the example cannot install offline (it runs where pip reaches PyPI)")
    output = open(tmp_path / "stdout.txt", "w")  # the job's log: a file, so that a full pipe never blocks apply
    apply = subprocess.Popen(
        [*CLI, "apply", "-f", str(EXAMPLES / name), "-y", *local_package_sources(), *extra],
        env=head_env, cwd=tmp_path, stdin=subprocess.PIPE, stdout=output, stderr=subprocess.PIPE, text=True,
    )
    said: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [said.put(line) for line in apply.stderr], daemon=True).start()
    lines: List[str] = []
    try:
        deadline = time.time() + 300  # jupyterlab's install from the local index takes a while on 2 cores
        while time.time() < deadline and not any(f"Port {port} answers" in line for line in lines):
            try:
                lines.append(said.get(timeout=1))
            except queue.Empty:
                if apply.poll() is not None:
                    break
        assert any(f"Port {port} answers" in line for line in lines), "".join(lines)
        status = None
        for _ in range(60):  # it listens; its first page may take a moment more
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
                    status = response.status
                    break
            except urllib.error.HTTPError as e:
                status = e.code
                break
            except OSError:
                time.sleep(1)
        assert status is not None and status < 500, status
    finally:
        apply.send_signal(signal.SIGINT)
        try:
            apply.stdin.write("y\n")
            apply.stdin.close()
            apply.wait(timeout=180)
        except (OSError, subprocess.TimeoutExpired):
            apply.kill()
            apply.wait()
        output.close()
    out = (tmp_path / "stdout.txt").read_text()
    time.sleep(0.5)
    while not said.empty():
        lines.append(said.get())
    assert "Stop the run before detaching?" in out + "".join(lines)
    assert not any("WARNING" in line or "Address already in use" in line for line in lines), "".join(lines)
