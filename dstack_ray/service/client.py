"""The client side of the service: HTTP calls to it, and finding (or starting) it.

Nothing here imports Ray: a CLI call costs an HTTP round trip to the service, not a Ray driver
(no `ray.init`, no entry in the dashboard's Jobs tab). Given a Ray address, the service is
found through the cluster's Job Submission API (the dashboard, port 8265 by default): it is the
running job whose metadata holds its port; when there is none, it is submitted there once.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shlex
import socket
import time
import urllib.parse
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from dstack_ray import __version__
from dstack_ray.errors import DstackRayError, api_error
from dstack_ray.service import (
    ALLOWED_HOSTS_ENV,
    API_VERSION,
    AUTO,
    OPEN_WARNING,
    SERVICE_HOST_ENV,
    DEFAULT_SERVICE_PORT,
    JOB_NAME,
    PAYLOAD_LIMIT_ENV,
    SERVICE_METADATA_KEY,
    SERVICE_PORT_ENV,
    SERVICE_PYTHON_ENV,
    preflight,
)

logger = logging.getLogger(__name__)

# What a client that starts the service passes on from its environment: the payload limit (the
# service refuses larger requests) and the extra host names browsers may use.
SERVICE_SETTINGS = (PAYLOAD_LIMIT_ENV, ALLOWED_HOSTS_ENV)

DASHBOARD_PORT = 8265
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"  # Ray's own variable for its Jobs API (`ray job`)
START_TIMEOUT = 120.0
RESTART_RETRIES = 30  # one a second while the service answers 503 (its controller restarts)
AUTH_HINT = (
    "this cluster has Ray token authentication on: give the client its token"
    " (RAY_AUTH_TOKEN, or the file in RAY_AUTH_TOKEN_PATH, default ~/.ray/auth_token)"
)


def auth_token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def auth_token() -> Optional[str]:
    """The cluster's Ray token, found where Ray's own clients look for it."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    try:
        return auth_token_path().read_text().strip() or None
    except OSError:
        return None


class Unreachable(DstackRayError):
    """Nothing answered at the server's address."""


class ServiceEnded(DstackRayError):
    """The service's Ray Job ended before it answered; `preflight`: the report it printed
    (see preflight.py), `job_message`: Ray's word on the job (a runtime-env failure, say)."""

    preflight: Optional[Dict[str, Any]] = None
    job_message: str = ""


class HttpCaller:
    """JSON requests to one HTTP server (the service, or Ray's dashboard) with the Ray token."""

    def __init__(self, url: str, token: Optional[str] = None, what: str = "the dstack-ray service") -> None:
        parts = urllib.parse.urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DstackRayError(f"{url!r} is not an http(s) URL", hint="give e.g. http://127.0.0.1:8270")
        self.url = url.rstrip("/")
        self._parts = parts
        self._token = token
        self._what = what

    def _connection(self, timeout: Optional[float]) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
        return kind(self._parts.hostname, self._parts.port, timeout=timeout)

    def _send(
        self, method: str, path: str, query: Optional[Mapping[str, Any]], body: Any, timeout: Optional[float]
    ) -> Tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        target = self._parts.path + path
        if query:
            target += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        data = None
        if isinstance(body, bytes):
            data = body
            headers["Content-Type"] = "application/octet-stream"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        connection = self._connection(timeout)
        try:
            connection.request(method, target, body=data, headers=headers)
            return connection, connection.getresponse()
        except (OSError, http.client.HTTPException) as e:
            connection.close()
            raise Unreachable(
                f"cannot reach {self._what} at {self.url}: {getattr(e, 'strerror', None) or e}",
                hint="check the address (`--address` or RAY_ADDRESS) and that the cluster is up",
            ) from None

    def _error(self, response: http.client.HTTPResponse, text: str) -> DstackRayError:
        if response.status in (401, 403):
            return DstackRayError(f"{self._what} at {self.url} refused the request: {text.strip()[:200]}", hint=AUTH_HINT)
        try:
            detail = json.loads(text)
            return api_error(response.status, str(detail["error"]), detail.get("hint"))
        except (ValueError, KeyError, TypeError):
            return api_error(response.status, f"{self._what} at {self.url} answered {response.status}: {text.strip()[:300]}")

    def call(
        self,
        method: str,
        path: str,
        query: Optional[Mapping[str, Any]] = None,
        body: Any = None,
        timeout: Optional[float] = 130,
        missing_ok: bool = False,
    ) -> Any:
        """The JSON answer (`body`: JSON, or bytes sent as they are); None for `missing_ok`
        requests the server answers with 404. While the service says its controller restarts
        (503), the request is repeated for a while (a repeated submission is recognised by its
        submission id)."""
        for attempt in range(RESTART_RETRIES + 1):
            connection, response = self._send(method, path, query, body, timeout)
            try:
                text = response.read().decode("utf-8", errors="replace")
            except (OSError, http.client.HTTPException) as e:
                raise DstackRayError(f"{self._what} at {self.url} closed the connection: {e}") from None
            finally:
                connection.close()
            if response.status != 503 or attempt == RESTART_RETRIES:
                break
            time.sleep(1.0)
        if response.status == 404 and missing_ok:
            return None
        if response.status >= 400:
            raise self._error(response, text)
        try:
            return json.loads(text) if text else None
        except ValueError:
            return text  # Ray's package upload answers with plain text

    def stream(self, path: str, query: Optional[Mapping[str, Any]] = None) -> Iterator[bytes]:
        """The body of a GET as it arrives (the server decides when it ends)."""
        connection, response = self._send("GET", path, query, None, None)
        try:
            if response.status >= 400:
                raise self._error(response, response.read().decode("utf-8", errors="replace"))
            while True:
                chunk = response.read1(1 << 20)
                if not chunk:
                    return
                yield chunk
        finally:
            connection.close()

    def websocket_url(self, path: str) -> str:
        scheme = "wss" if self._parts.scheme == "https" else "ws"
        return f"{scheme}://{self._parts.netloc}{self._parts.path}{path}"

    def auth_headers(self) -> Dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}


# -- finding the service ----------------------------------------------------------------------------


def is_service_url(address: Optional[str]) -> bool:
    return bool(address) and address.startswith(("http://", "https://"))


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a Ray `host:port` nobody listens on (ray.init would retry for minutes, and
    the dashboard found next to it could belong to another cluster)."""
    target = address.split("://", 1)[-1]
    if target == "auto" or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    if not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return
    except OSError as e:
        raise DstackRayError(
            f"cannot connect to the Ray cluster at {address}: {e.strerror or e}",
            hint="check the address (`--address` or RAY_ADDRESS) and that the Ray head is up (`ray status`)",
        ) from None


def _ray_host(address: str) -> str:
    """The head's host name of a Ray address (`host:port`, `ray://host:10001`, `auto`)."""
    target = address.split("://", 1)[-1].strip("/")
    if target == "auto":
        current = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
        try:
            target = current.read_text().strip()
        except OSError:
            raise DstackRayError(
                "address `auto`: no Ray cluster was started on this machine",
                hint="give the head's address (host:6379 or the service's http:// URL)",
            ) from None
    host = target.rsplit(":", 1)[0] if ":" in target else target
    return host.strip("[]") or "127.0.0.1"


def service_jobs(dashboard: HttpCaller) -> List[Dict[str, Any]]:
    """The cluster's service jobs that run or start, newest first."""
    jobs = dashboard.call("GET", "/api/jobs/") or []
    ours = [j for j in jobs if (j.get("metadata") or {}).get(SERVICE_METADATA_KEY) and j.get("status") in ("PENDING", "RUNNING")]
    return sorted(ours, key=lambda j: j.get("start_time") or 0, reverse=True)


def health(url: str, token: Optional[str]) -> Optional[Dict[str, Any]]:
    """The service's health answer ({"service", "version", "api_version", "auth"}), or None
    when nothing (or something else) answers there."""
    try:
        answer = HttpCaller(url, token).call("GET", "/api/health", timeout=5)
    except DstackRayError:
        return None
    return answer if isinstance(answer, dict) and answer.get("service") == JOB_NAME else None


class VersionMismatch(DstackRayError):
    """The cluster's service runs another dstack-ray than this client."""


def check_version(what: str, theirs: Optional[str], their_api: Optional[int] = API_VERSION, address: Optional[str] = None) -> None:
    """One version of dstack-ray per cluster: a service (or Controller) of another version or API
    is an error that says how to replace it, never used silently. `what` names it for the user."""
    if theirs == __version__ and their_api == API_VERSION:
        return
    where = f" --address {address}" if address else ""
    raise VersionMismatch(
        f"{what} runs dstack-ray {theirs} (API {their_api}); this client is dstack-ray {__version__} (API {API_VERSION})",
        hint=f"replace the service with this version: `dstack-ray server upgrade{where}` (it waits for no run:"
        f" active runs must end first), or install dstack-ray {theirs} here",
    )


def _entrypoint(python: str, host: str, port: int) -> str:
    return f"{shlex.quote(python)} -m dstack_ray.service --host {shlex.quote(host)} --port {port}"


def submit_service(
    dashboard: HttpCaller, python: str, host: str, port: int, runtime_env: Optional[Dict[str, Any]] = None
) -> str:
    """Start the service as a Ray Job (the Jobs tab shows it as `dstack-ray`); its submission id."""
    submission_id = f"{JOB_NAME}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    body: Dict[str, Any] = {
        "entrypoint": _entrypoint(python, host, port),
        "submission_id": submission_id,
        "metadata": {"job_name": JOB_NAME, SERVICE_METADATA_KEY: str(port), "dstack_ray_version": __version__},
        "entrypoint_num_cpus": 0,
    }
    settings = {name: os.environ[name] for name in SERVICE_SETTINGS if os.environ.get(name)}
    if settings:  # the service's own settings, as this client has them
        runtime_env = {**(runtime_env or {}), "env_vars": {**(runtime_env or {}).get("env_vars", {}), **settings}}
    if runtime_env:
        body["runtime_env"] = runtime_env
    dashboard.call("POST", "/api/jobs/", body=body)
    return submission_id


def upload(dashboard: HttpCaller, bundle: Any) -> str:
    """The bundle's package URI on the cluster, uploaded through the Jobs API unless the
    cluster has it already (the same upload `ray job submit --working-dir` makes)."""
    uri, data = bundle.packed()
    path = "/api/packages/gcs/" + uri.split("://", 1)[1]
    if dashboard.call("GET", path, missing_ok=True) is None:
        logger.info("uploading %s (%d files, %d KiB) as %s", bundle.what, len(bundle.files), len(data) >> 10, uri)
        dashboard.call("PUT", path, body=data, timeout=600)
    return uri


def wait_healthy(url: str, token: Optional[str], dashboard: HttpCaller, submission_id: str, timeout: float = START_TIMEOUT) -> Dict[str, Any]:
    """Until the service answers (its health answer); a service job that ended first is an
    error with its log (and the preflight report, when the job printed one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = health(url, token)
        if answer is not None:
            return answer
        job = dashboard.call("GET", f"/api/jobs/{submission_id}", missing_ok=True) or {}
        if job.get("status") in ("FAILED", "STOPPED", "SUCCEEDED"):
            logs = (dashboard.call("GET", f"/api/jobs/{submission_id}/logs", missing_ok=True) or {}).get("logs", "")
            tail = " | ".join(logs.strip().splitlines()[-5:])
            ended = ServiceEnded(
                f"the dstack-ray service job {submission_id} ended ({job.get('status')}): {job.get('message') or ''} {tail}".strip(),
                hint="see the job's log in the Ray dashboard (Jobs tab)",
            )
            ended.preflight = preflight.parse(logs)
            ended.job_message = job.get("message") or tail
            raise ended
        time.sleep(0.2)
    raise DstackRayError(
        f"the dstack-ray service did not answer at {url} within {timeout:.0f} s",
        hint="see the `dstack-ray` job's log in the Ray dashboard (Jobs tab)",
    )


def _running_service(dashboard: HttpCaller, host: str, token: Optional[str]) -> Optional[str]:
    """The URL of a service job that runs (or starts) and answers; one that is stopping is
    passed over once its job has ended."""
    for job in service_jobs(dashboard):
        url = f"http://{_url_host(host)}:{job['metadata'][SERVICE_METADATA_KEY]}"
        try:
            wait_healthy(url, token, dashboard, job["submission_id"], timeout=60)
            return url
        except ServiceEnded:
            continue
    return None


def unusable_python(report: Mapping[str, Any], python: str) -> DstackRayError:
    return DstackRayError(
        f"the cluster's Python ({python} on the head: Python {report.get('python')}, Ray {report.get('ray')})"
        f" cannot run dstack-ray: {'; '.join(report['problems'])}",
        hint=f"run the cluster on Python {preflight.PYTHON_MIN[0]}.{preflight.PYTHON_MIN[1]}+ with"
        f" ray[default]{preflight.ray_range_text()} (the node image), or name another Python on the head"
        f" with {SERVICE_PYTHON_ENV}; nothing was left running",
    )


def missing_packages(report: Mapping[str, Any], how: str) -> DstackRayError:
    from dstack_ray.service import ship

    specs = " ".join(shlex.quote(spec) for spec in ship.requirement_specs(report["missing"]))
    return DstackRayError(
        f"the cluster's Python lacks {ship.describe_missing(report['missing'])}, and {how}",
        hint=f"add them to the node image (`pip install {specs}` where Ray is installed), or let the nodes"
        " reach a package index; nothing was left running",
    )


def start_shipped(dashboard: HttpCaller, url: str, token: Optional[str], python: str, bind: str, port: int) -> None:
    """Start the service with dstack-ray shipped from this client (see ship.py): the code
    bundle first; when the head's Python lacks a package Ray normally brings (or uv), once more
    with this client's copies of them (same platform), else with Ray's pip install of the
    packages on the nodes (and no uv: jobs' venvs are then made with `python -m venv`)."""
    from dstack_ray.service import ship

    needs = {preflight.NEEDS_ENV: os.environ[preflight.NEEDS_ENV]} if os.environ.get(preflight.NEEDS_ENV) else {}
    runtime_env: Dict[str, Any] = {
        "py_modules": [upload(dashboard, ship.code_bundle())],
        "env_vars": {preflight.TOOLS_ENV: "uv", **needs},
    }
    lacking: Optional[Mapping[str, Any]] = None  # the first preflight report that named missing packages
    how = ""
    while True:
        submission_id = submit_service(dashboard, python, bind, port, runtime_env)
        try:
            wait_healthy(url, token, dashboard, submission_id)
            return
        except ServiceEnded as e:
            report = e.preflight
            if report is None and lacking is not None and "pip" in runtime_env:
                raise missing_packages(lacking, f"Ray could not pip-install them on the nodes ({e.job_message[:300]})") from None
            if report is None:
                raise
        if report["problems"]:
            raise unusable_python(report, python)
        if lacking is not None:  # what was added did not do it
            raise missing_packages(report, f"they are still missing after {how}")
        lacking = {**report, "missing": [m for m in report["missing"] if not m.get("optional")]}
        runtime_env["env_vars"] = {preflight.TOOLS_ENV: "", **needs}  # uv is optional: never fail for it again
        if ship.matches_here(report.get("platform")):
            runtime_env["py_modules"].append(upload(dashboard, ship.dependency_bundle([m["name"] for m in report["missing"]])))
            how = "this client shipped its own copies"
        elif lacking["missing"]:
            runtime_env["pip"] = {"packages": ship.requirement_specs(lacking["missing"]), "pip_check": False}
            how = "Ray pip-installed them"
        logger.info("the cluster's Python lacks %s: %s", ship.describe_missing(report["missing"]), how or "going on without uv")


def ensure_service(
    dashboard_url: str, host: str, bind: str, port: int, python: str, token: Optional[str], shipped: bool = True
) -> str:
    """The URL of the cluster's service (reached at `host`), started through the Jobs API if
    no service job runs: with dstack-ray shipped from this client, unless `shipped` is False
    (the head runs this very install: the local head)."""
    dashboard = HttpCaller(dashboard_url, token, what="the Ray dashboard")
    running = _running_service(dashboard, host, token)
    if running is not None:
        return running
    url = f"http://{_url_host(host)}:{port}"
    try:
        if shipped:
            start_shipped(dashboard, url, token, python, bind, port)
        else:
            wait_healthy(url, token, dashboard, submit_service(dashboard, python, bind, port))
    except ServiceEnded:
        # Another client may have started one at the same moment (ours then found its port taken).
        running = _running_service(dashboard, host, token)
        if running is None:
            raise
        return running
    return url


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _cache_file() -> Path:
    from dstack_ray.runtime.settings import default_state_dir

    return default_state_dir() / "services.json"


def _cached(key: str) -> Optional[str]:
    try:
        return json.loads(_cache_file().read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def _remember(key: str, url: str) -> None:
    path = _cache_file()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known[key] = url
    try:
        from dstack_ray.paths import private_dir

        private_dir(path.parent)
        path.write_text(json.dumps(known))
    except OSError as e:  # only a cache: the next call finds the service again
        logger.debug("cannot remember the service address: %s", e)


def service_for_ray_address(address: str, token: Optional[str], python: Optional[str] = None) -> Optional[str]:
    """The service of the cluster at a Ray address: remembered, else found or started through
    the cluster's Jobs API (with `python` on the head, default $DSTACK_RAY_SERVICE_PYTHON or
    `python`). None: the cluster has no dashboard (so no Jobs API) to find it with. A service of
    another dstack-ray version is an error (VersionMismatch)."""
    dashboard_url = _dashboard_for(address).url
    url = _cached(dashboard_url)
    answer = health(url, token) if url else None
    if answer is None:
        try:
            url = ensure_service(
                dashboard_url,
                host=_ray_host(address),
                bind=os.environ.get(SERVICE_HOST_ENV) or AUTO,
                port=int(os.environ.get(SERVICE_PORT_ENV) or DEFAULT_SERVICE_PORT),
                python=python or os.environ.get(SERVICE_PYTHON_ENV) or "python",
                token=token,
            )
        except Unreachable:
            logger.info("no Ray dashboard at %s: connecting to the cluster as a Ray driver", dashboard_url)
            return None
        answer = health(url, token) or {}
        _remember(dashboard_url, url)
        if answer.get("exposed") and not answer.get("auth"):  # said when this client first finds it
            logger.warning(OPEN_WARNING, url)
    assert url is not None
    check_version(f"the dstack-ray service at {url}", answer.get("version"), answer.get("api_version"), address)
    return url


def replace_service(address: str, token: Optional[str], dashboard_url: Optional[str] = None, timeout: float = 60) -> List[Tuple[str, Optional[str]]]:
    """Stop the cluster's service jobs so that the next client starts this version's: only
    while no run is active on it (a run's node agents run the old code). Returns the stopped
    jobs with the version each ran; raises when runs are active."""
    dashboard = _dashboard_for(address, dashboard_url)
    found = []
    for job in service_jobs(dashboard):
        url = f"http://{_url_host(_ray_host(address))}:{job['metadata'][SERVICE_METADATA_KEY]}"
        answer = health(url, token)
        if answer is not None:
            active = HttpCaller(url, token).call("GET", "/api/runs", query={"active": 1}) or []
            if active:
                names = ", ".join(run.get("name", "?") for run in active[:5]) + (" …" if len(active) > 5 else "")
                raise DstackRayError(
                    f"{len(active)} run{'s are' if len(active) > 1 else ' is'} active on the dstack-ray service"
                    f" {answer.get('version')} at {url} ({names}): the service is not replaced while runs use its code",
                    hint="wait for them to end, or stop them with `dstack-ray stop NAME`, then run the upgrade again",
                )
        found.append((job, (answer or {}).get("version")))
    for job, _ in found:
        dashboard.call("POST", f"/api/jobs/{job['submission_id']}/stop")
    deadline = time.monotonic() + timeout
    while service_jobs(dashboard) and time.monotonic() < deadline:
        time.sleep(0.5)
    _cache_file().unlink(missing_ok=True)
    return [(job["submission_id"], version) for job, version in found]


def _dashboard_for(address: str, known: Optional[str] = None) -> HttpCaller:
    """The Jobs API of the cluster at a Ray address: `known` (the local head's), else
    $RAY_API_SERVER_ADDRESS, else the dashboard's default port on the head's host."""
    check_reachable(address)
    dashboard_url = known or os.environ.get(API_SERVER_ENV) or f"http://{_url_host(_ray_host(address))}:{DASHBOARD_PORT}"
    if not is_service_url(dashboard_url):
        dashboard_url = f"http://{dashboard_url}"
    return HttpCaller(dashboard_url, auth_token(), what="the Ray dashboard")


def stop_service(address: str, dashboard_url: Optional[str] = None) -> List[str]:
    """Stop the service job(s) of the cluster at a Ray address; their submission ids. Runs go
    on: the next client starts the service again."""
    dashboard = _dashboard_for(address, dashboard_url)
    stopped = []
    for job in service_jobs(dashboard):
        dashboard.call("POST", f"/api/jobs/{job['submission_id']}/stop")
        stopped.append(job["submission_id"])
    return stopped


RELAY_CHUNK = 256 * 1024


async def relay_socket(url: str, headers: Mapping[str, str], sock: socket.socket) -> None:
    """Carry one local TCP connection over the service's websocket relay (binary messages;
    `eof` when the local side stopped sending) until both sides are done."""
    import asyncio

    import aiohttp

    loop = asyncio.get_running_loop()
    sock.setblocking(False)

    async with aiohttp.ClientSession(headers=dict(headers)) as session:
        async with session.ws_connect(url, max_msg_size=0) as ws:

            async def upstream() -> None:
                while True:
                    data = await loop.sock_recv(sock, RELAY_CHUNK)
                    if not data:
                        await ws.send_str("eof")
                        return
                    await ws.send_bytes(data)

            sender = asyncio.ensure_future(upstream())
            try:
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.BINARY:
                        break
                    await loop.sock_sendall(sock, message.data)
            finally:
                sender.cancel()
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
