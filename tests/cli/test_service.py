"""The dstack-ray service on the local head: the CLI is an HTTP client of it.

No CLI call becomes a Ray driver (so the Jobs tab holds only the service job, and a run that
outlives the command that submitted it is not marked FAILED in the dashboard), the API checks
Ray's token, and a restarted service keeps every run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from tests.cli.conftest import write_task
from tests.helpers import wait_for

# The CLI with `import ray` made impossible: every command the service serves must still work.
CLI_WITHOUT_RAY = [
    sys.executable,
    "-c",
    "import runpy, sys; sys.modules['ray'] = None; sys.argv[0] = 'dstack-ray'; runpy.run_module('dstack_ray_cli.main', run_name='__main__')",
]
SMALL = "resources:\n  cpu: 1\n  memory: 256MB\n"


def _head(cli) -> Dict[str, Any]:
    return json.loads((Path(cli.env["DSTACK_RAY_STATE_DIR"]) / "local-head.json").read_text())


def _token(cli) -> str:
    return (Path(cli.env["HOME"]) / ".ray" / "auth_token").read_text().strip()


def _request(url: str, token: Optional[str] = None, method: str = "GET", body: Any = None) -> Tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = json.dumps(body).encode() if body is not None else None
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read().decode()
            return response.status, json.loads(body) if body else None
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except urllib.error.URLError as e:  # nothing listens
        return 0, str(e.reason)


def _jobs(cli) -> List[Dict[str, Any]]:
    """The dashboard's Jobs tab, as its REST API lists it."""
    status, jobs = _request(_head(cli)["dashboard_url"] + "/api/jobs/", _token(cli))
    assert status == 200, jobs
    return jobs


def _service_jobs(cli) -> List[Dict[str, Any]]:
    return [j for j in _jobs(cli) if (j.get("metadata") or {}).get("job_name") == "dstack-ray" and j["status"] == "RUNNING"]


def _without_ray(cli, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    result = subprocess.run([*CLI_WITHOUT_RAY, *args], env=cli.env, cwd=cli.cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}: rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def test_cli_calls_import_no_ray_and_add_no_ray_jobs(cli):
    before = {j["submission_id"] or j["job_id"] for j in _jobs(cli)}
    assert len(_service_jobs(cli)) == 1
    write_task(cli.cwd, "calls", f"type: task\nname: svc-calls\ncommands:\n  - echo from the service\n{SMALL}")
    _without_ray(cli, "apply", "-f", "calls.dstack.yml", "-y", "-d")
    assert wait_for(lambda: '"done"' in _without_ray(cli, "ps", "-a", "--json").stdout, 90)
    assert "from the service" in _without_ray(cli, "logs", "svc-calls").stdout
    assert "svc-calls" in _without_ray(cli, "ps", "-a").stdout
    events = _without_ray(cli, "events", "svc-calls").stdout
    assert "submitted" in events and "done" in events, events
    _without_ray(cli, "delete", "svc-calls", "-y")
    after = {j["submission_id"] or j["job_id"] for j in _jobs(cli)}
    assert after == before, f"CLI calls added Ray jobs: {after - before}"


def test_the_api_refuses_requests_without_the_token(cli):
    url = _head(cli)["service"]
    status, health = _request(url + "/api/health")
    assert status == 200 and health["service"] == "dstack-ray" and health["auth"] is True
    assert _request(url + "/api/runs")[0] == 401
    assert _request(url + "/api/runs", token="not-the-token")[0] == 403
    assert _request(url + "/api/runs", token=_token(cli))[0] == 200
    task = {"type": "task", "commands": ["true"], "resources": {"cpu": 1, "memory": "0.."}}
    status, offers = _request(url + "/api/offers", _token(cli), "POST", {"configuration": task})
    assert status == 200 and offers["cluster"] and offers["cluster"][0]["backend"].startswith("ray"), offers
    status, refused = _request(url + "/api/offers", _token(cli), "POST", {"configuration": {**task, "resources": {"gpu": "2:3"}}})
    assert status == 400 and "resources.gpu" in refused, refused
    refused = subprocess.run(
        [*CLI_WITHOUT_RAY, "ps"], env={**cli.env, "RAY_AUTH_TOKEN": "not-the-token"}, cwd=cli.cwd, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 1 and "refused the request" in refused.stderr and "RAY_AUTH_TOKEN" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_run_outliving_its_client_is_not_failed_in_the_dashboard(cli):
    """`apply -d` exits at once; Ray used to mark the run's tasks FAILED ~15 s after the driver
    that created the Controller exited. Every task now belongs to the service's live job."""
    write_task(cli.cwd, "outlive", f"type: task\nname: svc-outlive\ncommands:\n  - sleep 20\n  - echo end\n{SMALL}")
    _without_ray(cli, "apply", "-f", "outlive.dstack.yml", "-y", "-d")
    assert wait_for(lambda: '"done"' in _without_ray(cli, "ps", "-a", "--json").stdout, 120)
    (service,) = _service_jobs(cli)

    def tasks() -> List[Dict[str, Any]]:
        status, answer = _request(_head(cli)["dashboard_url"] + "/api/v0/tasks?limit=10000&detail=1", _token(cli))
        assert status == 200, answer
        return answer["data"]["result"]["result"]

    def finished_jobs() -> List[Dict[str, Any]]:  # the agents' run_job calls Ray reports ended
        return [t for t in tasks() if t["name"].endswith(".run_job") and t["state"] == "FINISHED"]

    # The run took 20 s: past the ~15 s after which Ray marked a gone driver's tasks FAILED.
    assert wait_for(finished_jobs, 60), [(t["name"], t["state"]) for t in tasks()]
    everything = tasks()
    assert [(t["name"], t["job_id"]) for t in everything if t["state"] == "FAILED"] == []
    assert {t["job_id"] for t in everything} == {service["job_id"]}


def test_a_restarted_service_keeps_every_run(cli):
    write_task(cli.cwd, "across", f"type: task\nname: svc-across\ncommands:\n  - echo before\n  - sleep 8\n  - echo after\n{SMALL}")
    _without_ray(cli, "apply", "-f", "across.dstack.yml", "-y", "-d")
    assert wait_for(lambda: "running" in _without_ray(cli, "ps").stdout, 60)
    (old,) = _service_jobs(cli)
    stopped = _without_ray(cli, "server", "stop", "--address", _head(cli)["address"]).stdout
    assert f"Stopped the dstack-ray service job {old['submission_id']}" in stopped
    assert wait_for(lambda: _request(_head(cli)["service"] + "/api/health")[0] != 200, 60)
    listed = _without_ray(cli, "ps", "-a").stdout  # finds no service: starts a new one
    assert "svc-across" in listed and "svc-calls" not in listed
    (new,) = _service_jobs(cli)
    assert new["submission_id"] != old["submission_id"]
    logs = _without_ray(cli, "logs", "svc-across", "-f", timeout=120).stdout
    assert logs.splitlines() == ["before", "after"]
    assert wait_for(lambda: '"exited (0)"' in _without_ray(cli, "ps", "-a", "--json").stdout, 60)


def test_the_service_brings_a_lost_controller_back(cli):
    """The Controller killed for good (as a head restart would lose it): the service makes a new
    one from the store, and commands go on (they wait while it answers 503)."""
    kill = (
        "import ray; ray.init(address=%r, namespace='dstack', log_to_driver=False);"
        " ray.kill(ray.get_actor('dstack:controller', namespace='dstack'), no_restart=True)" % _head(cli)["address"]
    )
    killed = subprocess.run([sys.executable, "-c", kill], env={**cli.env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=120)
    assert killed.returncode == 0, killed.stderr
    listed = _without_ray(cli, "ps", "-a").stdout
    assert "svc-across" in listed
    write_task(cli.cwd, "after", f"type: task\nname: svc-after\ncommands:\n  - echo still served\n{SMALL}")
    assert "still served" in _without_ray(cli, "apply", "-f", "after.dstack.yml", "-y").stdout


def test_api_refusals_have_the_status_of_their_kind_and_no_traceback(cli):
    """404 for an unknown run whatever the verb, 409 for a request the run's state refuses,
    400 naming the field or parameter for malformed input, and no traceback in any answer; the
    CLI shows each as one line."""
    url, token = _head(cli)["service"], _token(cli)
    for method, path in (("GET", "/api/runs/no-such-run"), ("POST", "/api/runs/no-such-run/stop"), ("DELETE", "/api/runs/no-such-run"),
                         ("GET", "/api/runs/no-such-run/events"), ("GET", "/api/runs/no-such-run/logs")):
        status, answer = _request(url + path, token, method, {} if method == "POST" else None)
        assert status == 404 and "run no-such-run not found" in answer, (method, path, status, answer)
    status, answer = _request(url + "/api/runs", token, "POST", {"spec": {}})
    assert status == 400 and "invalid run spec" in answer and "configuration" in answer and "Traceback" not in answer, answer
    status, answer = _request(url + "/api/runs", token, "POST", {"payload": None})
    assert status == 400 and "spec: Field required" in answer, answer
    status, answer = _request(url + "/api/runs?limit=ten", token)
    assert status == 400 and "limit" in answer and "integer" in answer and "ten" not in answer, answer

    write_task(cli.cwd, "busy", "type: task\nname: cli-busy\ncommands:\n  - sleep 31380\n" + SMALL)
    cli("apply", "-f", "busy.dstack.yml", "-y", "-d", check_rc=0)
    status, answer = _request(url + "/api/runs/cli-busy", token, "DELETE")
    assert status == 409 and "is active" in answer, answer
    deleted = cli("delete", "cli-busy", "-y")
    assert deleted.returncode == 1 and "is active" in deleted.stderr and "Traceback" not in deleted.stderr
    cli("stop", "-x", "cli-busy", "-y", check_rc=0)
    stopped = cli("stop", "no-such-run", "-y")
    assert stopped.returncode == 1 and "no-such-run" in stopped.stderr and "Traceback" not in stopped.stderr


def test_no_answer_of_the_api_carries_a_secret(cli):
    """Every route of the API (models/api.py's table and the hand-written ones) answers without
    the run's env values, the `-e` values given on the command line or tokens in repo URLs;
    the CLI's own output neither (the review got `"API_KEY": "hunter2…"` from GET /api/runs/{run})."""
    url, token = _head(cli)["service"], _token(cli)
    secrets = ("hunter2-planted-env", "hunter2-planted-cli", "ghp_planted_token")
    write_task(
        cli.cwd, "secret",
        "type: task\nname: cli-secret\nenv:\n  - API_KEY=hunter2-planted-env\n  - FROM_CLI\n"
        "commands:\n  - echo started\n  - sleep 2\n" + SMALL,
    )
    applied = cli("apply", "-f", "secret.dstack.yml", "-y", "-e", "FROM_CLI=hunter2-planted-cli")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    answers = {"apply": applied.stdout + applied.stderr}
    run = _request(url + "/api/runs/cli-secret", token)[1]
    env = run["spec"]["configuration"]["env"]
    assert set(env) == {"API_KEY", "FROM_CLI"} and set(env.values()) == {"***"}, env
    from dstack_ray.models.api import OPERATIONS

    for op in OPERATIONS.values():
        path = op.path.format(name="cli-secret", run_id=run["id"])
        query = {"wait_run": "?version=0&timeout=0", "list_runs": "?limit=5", "metrics": ""}.get(op.name, "")
        if op.name in ("submit", "delete_run"):
            continue  # below: a submission's answer, and the delete at the end
        body = {} if op.method == "POST" else None
        answers[op.name] = json.dumps(_request(url + path + query, token, op.method, body))
    answers["active"] = json.dumps(_request(url + "/api/runs?active=1", token))
    answers["offers"] = json.dumps(_request(url + "/api/offers", token, "POST", {"configuration": {"type": "task", "commands": ["x"], "env": ["K=hunter2-planted-env"]}}))
    answers["health"] = json.dumps(_request(url + "/api/health"))
    logs = urllib.request.Request(url + "/api/runs/cli-secret/logs", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(logs, timeout=30) as response:
        answers["logs"] = response.read().decode()
    assert "started" in answers["logs"]
    resubmitted = {"spec": {**run["spec"], "run_name": "cli-secret-2", "submission_id": None,
                            "configuration": {"type": "task", "commands": ["true"], "env": {"K": "hunter2-planted-env"}, "resources": {"cpu": 1, "memory": "256MB"},
                                              "repos": [{"url": "https://ghp_planted_token@127.0.0.1:9/r.git"}]}}}
    answers["submit"] = json.dumps(_request(url + "/api/runs", token, "POST", resubmitted))
    for verb in (("ps", "-a", "--json"), ("ps", "-a", "-v"), ("events", "cli-secret"), ("logs", "cli-secret")):
        answers[" ".join(verb)] = cli(*verb).stdout
    for route, text in answers.items():
        assert not any(secret in text for secret in secrets), (route, text)
    cli("stop", "cli-secret", "-y")
    cli("stop", "cli-secret-2", "-y")
    for name in ("cli-secret", "cli-secret-2"):
        assert wait_for(lambda: cli("delete", name, "-y").returncode == 0, 60)
    assert cli("delete", "no-such", "-y").returncode == 1
