"""Finding the service without Ray: a fake Jobs API (Ray's dashboard) and a fake service on
loopback, served by threads of this test."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional

import pytest

from dstack_ray import __version__
from dstack_ray.errors import DstackRayError
from dstack_ray.service import client as service
from dstack_ray.service import preflight
from importlib import metadata


class FakeServer:
    """One HTTP server whose answers the test sets: {(method, path): (status, body)}."""

    def __init__(self) -> None:
        self.routes: Dict[tuple, tuple] = {}
        self.requests: List[Dict[str, Any]] = []
        self.packages: Dict[str, bytes] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw and self.headers.get("Content-Type") == "application/json" else (raw or None)
                server.requests.append({"method": self.command, "path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                path = self.path.split("?")[0]
                if path.startswith("/api/packages/") and (self.command, path) not in server.routes:
                    # Ray's package store: GET says whether it has one, PUT uploads it
                    if self.command == "PUT":
                        server.packages[path] = raw
                    status, answer = (200, "ok") if path in server.packages else (404, "not found")
                else:
                    status, answer = server.routes.get((self.command, path), (404, {"error": "no such route"}))
                if callable(answer):
                    answer = answer(body)
                data = json.dumps(answer).encode() if not isinstance(answer, str) else answer.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake():
    servers: List[FakeServer] = []

    def make() -> FakeServer:
        servers.append(FakeServer())
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def _service(server: FakeServer, version: str = __version__) -> None:
    server.routes[("GET", "/api/health")] = (200, {"service": "dstack-ray", "version": version, "api_version": service.API_VERSION, "auth": False})


def _job(submission_id: str, port: int, status: str = "RUNNING", start: int = 1) -> Dict[str, Any]:
    return {"submission_id": submission_id, "status": status, "start_time": start, "metadata": {"job_name": "dstack-ray", service.SERVICE_METADATA_KEY: str(port)}}


def test_a_running_service_job_is_found_and_none_is_submitted(fake):
    dashboard, svc = fake(), fake()
    _service(svc)
    dashboard.routes[("GET", "/api/jobs/")] = (200, [_job("old", 1, status="STOPPED"), _job("dstack-ray-1", svc.port)])
    dashboard.routes[("GET", "/api/jobs/dstack-ray-1")] = (200, _job("dstack-ray-1", svc.port))
    url = service.ensure_service(dashboard.url, host="127.0.0.1", bind="0.0.0.0", port=1, python="python", token="secret")
    assert url == svc.url
    assert not [r for r in dashboard.requests if r["method"] == "POST"]
    assert {r["auth"] for r in dashboard.requests} == {"Bearer secret"}


def test_no_service_job_submits_one_that_listens_where_the_client_expects(fake):
    dashboard, svc = fake(), fake()
    submitted: List[Dict[str, Any]] = []

    def submit(body: Dict[str, Any]) -> Dict[str, Any]:
        submitted.append(body)
        _service(svc)  # the job starts: the service answers from now on
        dashboard.routes[("GET", f"/api/jobs/{body['submission_id']}")] = (200, _job(body["submission_id"], svc.port))
        return {"submission_id": body["submission_id"]}

    dashboard.routes[("GET", "/api/jobs/")] = (200, [])
    dashboard.routes[("POST", "/api/jobs/")] = (200, submit)
    url = service.ensure_service(dashboard.url, host="127.0.0.1", bind="0.0.0.0", port=svc.port, python="/opt/py 3/python", token=None)
    assert url == svc.url
    (body,) = submitted
    assert body["entrypoint"] == f"'/opt/py 3/python' -m dstack_ray.service --host 0.0.0.0 --port {svc.port}"
    assert body["metadata"] == {"job_name": "dstack-ray", service.SERVICE_METADATA_KEY: str(svc.port), "dstack_ray_version": __version__}
    assert body["submission_id"].startswith("dstack-ray-") and body["entrypoint_num_cpus"] == 0
    # dstack-ray travels with the job: its code bundle, uploaded to the cluster's package store first.
    (uri,) = body["runtime_env"]["py_modules"]
    assert uri.startswith("gcs://_ray_pkg_") and uri.endswith(".zip")
    assert f"/api/packages/gcs/{uri[6:]}" in dashboard.packages
    assert body["runtime_env"]["env_vars"] == {"DSTACK_RAY_TOOLS": "uv"}


def test_a_service_job_that_fails_is_an_error_with_its_log(fake):
    dashboard = fake()

    def submit(body: Dict[str, Any]) -> Dict[str, Any]:
        sid = body["submission_id"]
        dashboard.routes[("GET", f"/api/jobs/{sid}")] = (200, {**_job(sid, 1, status="FAILED"), "message": "exit code 1"})
        dashboard.routes[("GET", f"/api/jobs/{sid}/logs")] = (200, {"logs": "line 1\nModuleNotFoundError: No module named 'ray'\n"})
        return {"submission_id": sid}

    dashboard.routes[("GET", "/api/jobs/")] = (200, [])
    dashboard.routes[("POST", "/api/jobs/")] = (200, submit)
    with pytest.raises(service.ServiceEnded, match="FAILED.*exit code 1.*No module named 'ray'"):
        service.ensure_service(dashboard.url, host="127.0.0.1", bind="0.0.0.0", port=9, python="python", token=None)


def test_a_stopping_service_job_is_passed_over(fake):
    """The job list still says RUNNING while a stopped service shuts down: once the job reads
    STOPPED, a new one is submitted instead of waiting on the old port."""
    dashboard, svc = fake(), fake()
    dashboard.routes[("GET", "/api/jobs/")] = (200, [_job("stopping", 9)])
    dashboard.routes[("GET", "/api/jobs/stopping")] = (200, _job("stopping", 9, status="STOPPED"))
    dashboard.routes[("GET", "/api/jobs/stopping/logs")] = (200, {"logs": ""})

    def submit(body: Dict[str, Any]) -> Dict[str, Any]:
        _service(svc)
        dashboard.routes[("GET", f"/api/jobs/{body['submission_id']}")] = (200, _job(body["submission_id"], svc.port))
        return {}

    dashboard.routes[("POST", "/api/jobs/")] = (200, submit)
    assert service.ensure_service(dashboard.url, host="127.0.0.1", bind="0.0.0.0", port=svc.port, python="python", token=None) == svc.url


def test_a_ray_address_without_a_dashboard_means_no_service(fake, monkeypatch, tmp_path):
    gcs = fake()  # something listens on the "GCS" port, nothing on the dashboard's
    monkeypatch.setenv("DSTACK_RAY_STATE_DIR", str(tmp_path))
    monkeypatch.setenv(service.API_SERVER_ENV, "http://127.0.0.1:1")
    assert service.service_for_ray_address(f"127.0.0.1:{gcs.port}", None) is None


def test_a_found_service_is_remembered_per_cluster(fake, monkeypatch, tmp_path):
    dashboard, svc, gcs = fake(), fake(), fake()
    _service(svc)
    dashboard.routes[("GET", "/api/jobs/")] = (200, [_job("s", svc.port)])
    dashboard.routes[("GET", "/api/jobs/s")] = (200, _job("s", svc.port))
    monkeypatch.setenv("DSTACK_RAY_STATE_DIR", str(tmp_path))
    monkeypatch.setenv(service.API_SERVER_ENV, dashboard.url)
    assert service.service_for_ray_address(f"127.0.0.1:{gcs.port}", None) == svc.url
    dashboard.close()  # the next client goes straight to the remembered service
    assert service.service_for_ray_address(f"127.0.0.1:{gcs.port}", None) == svc.url
    assert json.loads((tmp_path / "services.json").read_text()) == {dashboard.url: svc.url}


def test_unreachable_ray_address_is_a_clear_error():
    with pytest.raises(DstackRayError, match="cannot connect to the Ray cluster at 127.0.0.1:1"):
        service.service_for_ray_address("127.0.0.1:1", None)


@pytest.mark.parametrize(
    "status,body,message,hint",
    [
        (401, "Unauthorized: Missing authentication token", "refused the request: Unauthorized", "RAY_AUTH_TOKEN"),
        (403, "Forbidden: Invalid authentication token", "refused the request: Forbidden", "RAY_AUTH_TOKEN"),
        (400, {"error": "run x is active (running); stop it before deleting", "hint": None}, "run x is active", None),
        (500, "<html>boom</html>", "answered 500: <html>boom</html>", None),
    ],
)
def test_refusals_become_errors_a_user_can_act_on(fake, status, body, message, hint):
    svc = fake()
    svc.routes[("GET", "/api/runs")] = (status, body)
    with pytest.raises(DstackRayError, match=message) as caught:
        service.HttpCaller(svc.url).call("GET", "/api/runs")
    assert (hint in (caught.value.hint or "")) if hint else caught.value.hint is None


def test_missing_ok_and_the_token_header(fake):
    svc = fake()
    assert service.HttpCaller(svc.url, "tok").call("GET", "/api/runs/nope", missing_ok=True) is None
    assert svc.requests[-1]["auth"] == "Bearer tok"
    with pytest.raises(service.Unreachable, match="cannot reach the dstack-ray service at http://127.0.0.1:1"):
        service.HttpCaller("http://127.0.0.1:1").call("GET", "/api/runs")
    with pytest.raises(DstackRayError, match="not an http"):
        service.HttpCaller("127.0.0.1:8270")


def test_the_token_is_found_where_ray_looks(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    assert service.auth_token() is None
    (tmp_path / "token").write_text("from-file\n")
    assert service.auth_token() == "from-file"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert service.auth_token() == "from-env"


def test_two_clients_starting_the_service_at_once_share_one(fake):
    """Ours could not listen (the other client's service took the port): the other is used."""
    dashboard, svc = fake(), fake()
    _service(svc)

    def submit(body: Dict[str, Any]) -> Dict[str, Any]:
        sid = body["submission_id"]
        dashboard.routes[("GET", f"/api/jobs/{sid}")] = (200, _job(sid, 1, status="FAILED"))
        dashboard.routes[("GET", f"/api/jobs/{sid}/logs")] = (200, {"logs": "cannot listen on 0.0.0.0:1"})
        dashboard.routes[("GET", "/api/jobs/")] = (200, [_job(sid, 1, status="FAILED"), _job("other", svc.port)])
        dashboard.routes[("GET", "/api/jobs/other")] = (200, _job("other", svc.port))
        return {}

    dashboard.routes[("GET", "/api/jobs/")] = (200, [])
    dashboard.routes[("POST", "/api/jobs/")] = (200, submit)
    assert service.ensure_service(dashboard.url, host="127.0.0.1", bind="0.0.0.0", port=1, python="python", token=None) == svc.url


def test_a_restarting_controller_is_waited_for(fake):
    """503 (the service is getting its controller back) is repeated, then answered."""
    svc = fake()
    calls = []

    def restarting(body: Any) -> Dict[str, Any]:
        calls.append(body)
        if len(calls) == 2:  # back after two refusals
            svc.routes[("GET", "/api/runs")] = (200, [])
        return {"error": "the dstack-ray controller is restarting", "hint": "try again"}

    svc.routes[("GET", "/api/runs")] = (503, restarting)
    assert service.HttpCaller(svc.url).call("GET", "/api/runs") == []
    assert len(svc.requests) == 3


# -- shipping dstack-ray to a cluster that has only Ray ---------------------------------------------


def _starting_cluster(dashboard: FakeServer, svc: FakeServer, outcomes: List[Any]) -> List[Dict[str, Any]]:
    """A Jobs API whose n-th submitted service job ends as `outcomes[n]`: a preflight report (the
    job prints it and fails), a Ray failure message (str), or None (the service starts)."""
    submitted: List[Dict[str, Any]] = []

    def submit(body: Dict[str, Any]) -> Dict[str, Any]:
        submitted.append(body)
        sid, outcome = body["submission_id"], outcomes[len(submitted) - 1]
        if outcome is None:
            _service(svc)
            dashboard.routes[("GET", f"/api/jobs/{sid}")] = (200, _job(sid, svc.port))
            return {"submission_id": sid}
        log = "" if isinstance(outcome, str) else "starting\n" + preflight.MARK + json.dumps(outcome) + "\n"
        message = outcome if isinstance(outcome, str) else "Job entrypoint command failed with exit code 3"
        dashboard.routes[("GET", f"/api/jobs/{sid}")] = (200, {**_job(sid, svc.port, status="FAILED"), "message": message})
        dashboard.routes[("GET", f"/api/jobs/{sid}/logs")] = (200, {"logs": log})
        return {"submission_id": sid}

    dashboard.routes[("GET", "/api/jobs/")] = (200, [])
    dashboard.routes[("POST", "/api/jobs/")] = (200, submit)
    return submitted


def _report(missing=(), problems=(), platform=None):
    return {"python": "3.11.2", "platform": platform or preflight.platform_tag(), "ray": "2.60.0", "problems": list(problems), "missing": list(missing)}


def _submit_ids(submitted: List[Dict[str, Any]]) -> List[str]:
    return [b["submission_id"] for b in submitted]


def _start(dashboard: FakeServer, svc: FakeServer) -> str:
    return service.ensure_service(dashboard.url, host="127.0.0.1", bind="0.0.0.0", port=svc.port, python="python", token=None)


def test_the_code_bundle_holds_dstack_ray_and_its_pure_dependencies_and_nothing_of_this_machine():
    from dstack_ray.service import ship

    bundle = ship.code_bundle()
    names = set(bundle.files)
    assert {"dstack_ray/__init__.py", "dstack_ray/service/preflight.py", "dstack_ray/exec/guard.py", "croniter/__init__.py", "pynvml.py"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or n.startswith((".", "/")) or n == "example.py"]
    uri, data = bundle.packed()
    assert bundle.packed()[0] == uri  # the same files give the same name: a cluster that has it gets no upload
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert sorted(archive.namelist()) == sorted(names)


def test_missing_packages_of_the_same_platform_are_shipped_from_this_client(fake):
    dashboard, svc = fake(), fake()
    missing = [{"name": "pydantic", "wanted": ">=2.7", "found": "2.5.3"}, {"name": "uv", "wanted": "", "found": None, "optional": True}]
    submitted = _starting_cluster(dashboard, svc, [_report(missing), None])
    assert _start(dashboard, svc) == svc.url
    first, second = submitted
    assert len(first["runtime_env"]["py_modules"]) == 1 and "pip" not in second["runtime_env"]
    code, deps = second["runtime_env"]["py_modules"]
    assert code == first["runtime_env"]["py_modules"][0]
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(dashboard.packages[f"/api/packages/gcs/{deps[6:]}"])) as archive:
        shipped = set(archive.namelist())
    assert {"pydantic/__init__.py", "bin/uv"} <= shipped and any(n.startswith("pydantic_core/_pydantic_core") for n in shipped)
    assert second["runtime_env"]["env_vars"] == {"DSTACK_RAY_TOOLS": ""}  # uv is optional: not asked for again


def test_missing_packages_of_another_platform_are_pip_installed_by_ray_else_named(fake):
    dashboard, svc = fake(), fake()
    missing = [{"name": "pydantic", "wanted": ">=2.7", "found": None}, {"name": "uv", "wanted": "", "found": None, "optional": True}]
    other = "cpython-39-linux-aarch64"
    submitted = _starting_cluster(dashboard, svc, [_report(missing, platform=other), None])
    assert _start(dashboard, svc) == svc.url
    assert submitted[1]["runtime_env"]["pip"] == {"packages": ["pydantic>=2.7"], "pip_check": False}  # uv: going on without it
    assert len(submitted[1]["runtime_env"]["py_modules"]) == 1

    dashboard, svc = fake(), fake()
    _starting_cluster(dashboard, svc, [_report(missing, platform=other), "runtime_env setup failed: Failed to install pip packages: No matching distribution"])
    with pytest.raises(DstackRayError) as failed:
        _start(dashboard, svc)
    assert "lacks pydantic>=2.7" in str(failed.value) and "could not pip-install" in str(failed.value) and "No matching distribution" in str(failed.value)
    assert "pip install 'pydantic>=2.7'" in failed.value.hint and "nothing was left running" in failed.value.hint


def test_a_python_or_ray_the_service_cannot_run_on_is_one_error_naming_both(fake):
    dashboard, svc = fake(), fake()
    problems = ["Ray 2.30.0 is outside the versions dstack-ray supports (ray>=2.60,<2.61)"]
    submitted = _starting_cluster(dashboard, svc, [_report(problems=problems)])
    with pytest.raises(DstackRayError) as failed:
        _start(dashboard, svc)
    assert len(submitted) == 1  # nothing retried, nothing left running
    assert "Ray 2.30.0 is outside" in str(failed.value) and "Python 3.11.2" in str(failed.value)
    assert f"ray[default]{preflight.ray_range_text()}" in failed.value.hint and "DSTACK_RAY_SERVICE_PYTHON" in failed.value.hint


def test_preflight_reports_what_this_python_lacks(monkeypatch):
    report = preflight.report("no-such-package-xyz>=1.0,pydantic>=999")
    assert report["problems"] == [] and report["platform"] == preflight.platform_tag()
    assert {m["name"]: m["found"] for m in report["missing"]} == {"no-such-package-xyz": None, "pydantic": metadata.version("pydantic")}
    monkeypatch.setattr(preflight, "RAY_RANGE", ((2, 61), (2, 62)))
    monkeypatch.setattr(preflight, "PYTHON_MIN", (9, 0))
    problems = preflight.report()["problems"]
    assert len(problems) == 2 and "older than 9.0" in problems[0] and "ray>=2.61,<2.62" in problems[1]
    assert preflight.version_tuple("2.60.0rc1") == (2, 60, 0) and preflight.version_tuple("2.7") == (2, 7)
    assert preflight.parse("x\n2026 INFO " + preflight.MARK + '{"a": 1}\n') == {"a": 1} and preflight.parse("nothing") is None


def test_a_service_of_another_version_is_refused_with_the_way_to_replace_it(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("DSTACK_RAY_STATE_DIR", str(tmp_path))
    gcs, dashboard, svc = fake(), fake(), fake()
    _service(svc, version="0.0.9")
    dashboard.routes[("GET", "/api/jobs/")] = (200, [_job("dstack-ray-old", svc.port)])
    dashboard.routes[("GET", "/api/jobs/dstack-ray-old")] = (200, _job("dstack-ray-old", svc.port))
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", dashboard.url)
    with pytest.raises(service.VersionMismatch) as refused:
        service.service_for_ray_address(f"127.0.0.1:{gcs.port}", None)
    assert "runs dstack-ray 0.0.9" in str(refused.value) and f"this client is dstack-ray {__version__}" in str(refused.value)
    assert f"dstack-ray server upgrade --address 127.0.0.1:{gcs.port}" in refused.value.hint


def test_replacing_a_service_is_refused_while_runs_are_active(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("DSTACK_RAY_STATE_DIR", str(tmp_path))
    gcs, dashboard, svc = fake(), fake(), fake()
    _service(svc, version="0.0.9")
    dashboard.routes[("GET", "/api/jobs/")] = (200, [_job("dstack-ray-old", svc.port)])
    svc.routes[("GET", "/api/runs")] = (200, [{"name": "train-1"}])
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", dashboard.url)
    with pytest.raises(DstackRayError, match="1 run is active.*0.0.9.*train-1"):
        service.replace_service(f"127.0.0.1:{gcs.port}", None)
    assert not [r for r in dashboard.requests if r["method"] == "POST"]  # nothing stopped

    svc.routes[("GET", "/api/runs")] = (200, [])
    stops = []

    def stop(body: Any) -> Dict[str, Any]:
        stops.append(1)
        dashboard.routes[("GET", "/api/jobs/")] = (200, [])  # the job ends
        return {"stopped": True}

    dashboard.routes[("POST", "/api/jobs/dstack-ray-old/stop")] = (200, stop)
    assert service.replace_service(f"127.0.0.1:{gcs.port}", None) == [("dstack-ray-old", "0.0.9")]
    assert stops == [1]
