"""The service on a plain `ray start --head` (Ray's defaults: dashboard on 127.0.0.1, no token
auth): it listens on loopback only, and a web page cannot use it (the review's browser request
ran `id > /tmp/x` as root through it)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.plainray.conftest import listening, plain_head

PLANT = "/tmp/dstack-ray-test-browser-planted"


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    yield from plain_head(tmp_path_factory.mktemp("defaults"))


@pytest.fixture(scope="module")
def service(head):
    """The service the CLI starts on that cluster (shipped through the Jobs API); its URL."""
    listed = head.cli("ps")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "reachable beyond" not in listed.stderr  # nothing to warn about on loopback
    return f"http://127.0.0.1:{head.service_port}"


def _request(url, method="GET", body=None, headers=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_the_service_listens_where_the_dashboard_does(head, service):
    assert listening(head.dashboard_port) == ["127.0.0.1"]
    assert listening(head.service_port) == ["127.0.0.1"]
    status, answer = _request(service + "/api/health")
    assert status == 200 and json.loads(answer)["auth"] is False and json.loads(answer)["exposed"] is False


def test_a_web_page_cannot_submit_a_run(head, service):
    """The review's request, as a page's `fetch` sends it; Ray's Jobs API refuses the same."""
    spec = {"spec": {"run_name": "browser", "configuration": {"type": "task", "commands": [f"id > {PLANT}"]}}}
    browser = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)", "Origin": "http://evil.example", "Content-Type": "text/plain"}
    status, answer = _request(service + "/api/runs", "POST", json.dumps(spec).encode(), browser)
    assert status == 405 and "browser" in answer, answer
    ray_status, _ = _request(f"http://127.0.0.1:{head.dashboard_port}/api/jobs/", "POST", b"{}", browser)
    assert ray_status in (403, 405)  # Ray's own refusal of the same request
    status, answer = _request(service + "/api/runs", "POST", json.dumps(spec).encode(), {"Content-Type": "text/plain"})
    assert status == 415, answer  # a form or text/plain post: not even from a non-browser
    rebound = {"User-Agent": "Mozilla/5.0", "Host": "attacker.example:8270"}
    status, answer = _request(service + "/api/runs", headers=rebound)
    assert status == 403 and "attacker.example" in answer, answer
    status, answer = _request(service + "/api/runs")  # the CLI's way: no browser headers
    assert status == 200 and all(run["name"] != "browser" for run in json.loads(answer))
    import os

    assert not os.path.exists(PLANT)
