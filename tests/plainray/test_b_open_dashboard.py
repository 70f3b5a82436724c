"""A cluster whose dashboard listens on every interface (`--dashboard-host 0.0.0.0`, as KubeRay
sets it) without token auth: the service listens as widely, and says once that anyone who
reaches it can run commands."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.plainray.conftest import listening, machine_ip, plain_head


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    yield from plain_head(tmp_path_factory.mktemp("open"), "--dashboard-host=0.0.0.0", host=machine_ip())


def test_an_open_service_listens_as_widely_as_the_dashboard_and_says_so_once(head):
    first = head.cli("ps")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "reachable beyond its host and Ray's token authentication is off" in first.stderr
    assert listening(head.service_port) == ["0.0.0.0"]
    with urllib.request.urlopen(f"http://{head.host}:{head.service_port}/api/health", timeout=30) as response:
        health = json.loads(response.read())
    assert health["exposed"] is True and health["auth"] is False
    again = head.cli("ps")
    assert again.returncode == 0 and "reachable beyond" not in again.stderr  # once per client
