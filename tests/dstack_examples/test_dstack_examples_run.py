"""dstack's documented examples that need no GPU, image pull or model download, run unchanged:
batch ones end `done` with their output; servers answer HTTP on their declared port while apply
stays attached, then stop when asked (Ctrl+C, "stop the run": yes).

Left out, by reading them: the GPU and image examples, `dstack: true` (needs dstack's server),
the qlora trainers (a model download), the named-volume and commands-less volume snippets, and
the 4-node Ray cluster (four nodes do not fit on one local head; `tests/multihost` runs
multi-node examples)."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.dstack_examples.conftest import EXAMPLES, local_package_sources, local_wheel
from tests.helpers import CLI, AttachedApply

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
    apply = AttachedApply(["-f", str(EXAMPLES / name), "-y", *local_package_sources(), *extra], head_env, tmp_path, tmp_path / "stdout.txt")
    try:
        # jupyterlab's install from the local index takes a while on 2 cores
        assert apply.wait_for_line(f"Port {port} answers", 300), "".join(apply.said)
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
        out = apply.stop_the_run(timeout=180)
    assert "Stop the run before detaching?" in out + "".join(apply.said)
    assert not any("WARNING" in line or "Address already in use" in line for line in apply.said), "".join(apply.said)
