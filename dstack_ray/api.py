"""The public Python API: `Client` submits and finds runs, `Run` follows one.

The CLI reaches the cluster only through this module; for what it shows it also uses the
configuration models (`dstack_ray.config`), the plan and offers (`dstack_ray.plan`), the
launcher (`cluster render`) and the service's client (`server`).
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
import socket
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from dstack_ray.config import ConfigurationError, TaskConfiguration, load_configuration, parse_configuration
from dstack_ray.config.checks import check_host_paths, check_submittable
from dstack_ray.config.env import EnvSentinel
from dstack_ray.config.interpolate import interpolate
from dstack_ray.errors import ApiError, DstackRayError
from dstack_ray.exec.records import LineJoiner, LogLine, parse_records, pieces
from dstack_ray.models.api import OPERATIONS, MetricsSample
from dstack_ray.exec.prepare import RunPayload
from dstack_ray.models.cluster import ClusterView
from dstack_ray.plan.catalog import offers_for
from dstack_ray.plan.offers import Offers
from dstack_ray.plan.planner import RunPlan, build_plan
from dstack_ray.models import JobRecord, RunRecord, RunSpec, RunStatus, RunTerminationReason
from dstack_ray.runtime.settings import NAMESPACE, RuntimeSettings, named_controller
from dstack_ray.service import PAYLOAD_LIMIT_ENV, payload_limit

logger = logging.getLogger(__name__)

LIST_PAGE = 500  # runs per call when a listing walks the whole history

ConfigurationInput = Union[str, os.PathLike, TaskConfiguration, Mapping[str, Any]]


class _ActorController:
    """The Controller through Ray actor handles: inside a Ray application (this process is a
    Ray driver already), on a cluster without a dashboard, or when the caller manages the
    Controller itself (`create`: made here if missing, with the caller's settings)."""

    def __init__(self, address: Optional[str], settings: RuntimeSettings, create: bool) -> None:
        connected_here = _connect(address)
        from dstack_ray.runtime.controller import controller_handle

        runtime_env = None
        if not create and not _start_service_for_this_cluster() and not connected_here:
            # A Ray application makes the Controller itself: its own environment may not carry
            # dstack-ray to the nodes (ours, from `_connect`, does).
            runtime_env = _code_in_gcs()
        self.handle = controller_handle(settings, runtime_env)
        from dstack_ray.service.client import check_version

        check_version("the cluster's dstack-ray controller", self._call(self.handle.ping).get("version"), address=address)

    def _call(self, method: Any, *args: Any, timeout: Optional[float] = 120, keywords: Optional[Dict[str, Any]] = None) -> Any:
        import ray

        try:
            return ray.get(method.remote(*args, **(keywords or {})), timeout=timeout)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, ApiError):  # the same error the HTTP client raises
                raise cause from None
            raise
        except ray.exceptions.GetTimeoutError:
            raise DstackRayError(
                "the dstack-ray controller did not answer in time",
                hint="check the cluster with `ray status`; the controller may be restarting",
            ) from None

    def address_text(self) -> str:
        import ray

        try:
            return ray.get_runtime_context().gcs_address
        except AttributeError:
            return "connected"

    def call(self, operation: str, /, **arguments: Any) -> Any:
        """An operation of models/api.py with its arguments: the Controller's method."""
        op = OPERATIONS[operation]
        timeout = float(arguments[op.waits]) + 60 if op.waits else 120
        return op.answer_of(self._call(getattr(self.handle, operation), timeout=timeout, keywords=arguments))

    def relay(self, run_id: str, port: int, sock: socket.socket) -> None:
        raise DstackRayError(
            "the run's node cannot be reached from here, and relaying a port needs the dstack-ray service",
            hint="connect the Client to the service (its http:// URL) to attach",
        )

    def log_chunks(self, run_id: str, attempt: int, rank: int, follow: bool) -> Iterator[bytes]:
        offset = 0
        while True:
            data, offset, final = self._call(self.handle.read_logs, run_id, attempt, rank, offset, 5.0 if follow else 0.0)
            if data:
                yield data
            if final or (not follow and not data):
                return


class _ServiceController:
    """The Controller through the service's HTTP API (what the CLI uses: no Ray driver)."""

    def __init__(self, url: str) -> None:
        from dstack_ray.service.client import HttpCaller, auth_token

        self.http = HttpCaller(url, auth_token())

    def address_text(self) -> str:
        return self.http.url

    def call(self, operation: str, /, **arguments: Any) -> Any:
        """An operation of models/api.py with its arguments: its route on the service."""
        op = OPERATIONS[operation]
        path = op.path.format(**{key: _quote(str(arguments.pop(key))) for key in op.path_names})
        timeout = float(arguments[op.waits]) + 60 if op.waits else 130
        values = op.arguments(**arguments).model_dump(mode="json", by_alias=True, exclude_none=True)
        if op.in_query:
            query = {key: ("1" if value else None) if isinstance(value, bool) else value for key, value in values.items()}
            answer = self.http.call(op.method, path, query, timeout=timeout, missing_ok=op.missing_ok)
        else:
            answer = self.http.call(op.method, path, body=values, timeout=timeout, missing_ok=op.missing_ok)
        return op.answer_of(answer)

    def log_chunks(self, run_id: str, attempt: int, rank: int, follow: bool) -> Iterator[bytes]:
        query = {"rank": rank, "attempt": attempt, "follow": "1" if follow else None}
        return self.http.stream(f"/api/runs/{_quote(run_id)}/logs", query)

    def relay(self, run_id: str, port: int, sock: socket.socket) -> None:
        import asyncio

        from dstack_ray.service.client import relay_socket

        url = self.http.websocket_url(f"/api/runs/{_quote(run_id)}/ports/{port}")
        asyncio.run(relay_socket(url, self.http.auth_headers(), sock))


def _quote(name: str) -> str:
    import urllib.parse

    return urllib.parse.quote(name, safe="")


def _connect(address: Optional[str]) -> bool:
    """This process as a Ray driver (for actor handles), unless it is one already (False)."""
    if _ray_driver():
        return False
    from dstack_ray import local_head

    if not address:
        head = local_head.status() or local_head.start()
        address = head.address
        if head.auth and "ray" not in sys.modules:  # read when Ray is imported
            os.environ["RAY_AUTH_MODE"] = "token"
    from dstack_ray.service.client import check_reachable

    check_reachable(address)
    shipped = local_head.head_at(address) is None  # a cluster that may have only Ray
    _ray_init(address, _shipped_runtime_env() if shipped else None)
    if shipped:
        _ship_what_the_cluster_lacks(address)
    return True


def _ray_init(address: str, runtime_env: Optional[Dict[str, Any]]) -> None:
    import ray

    try:
        ray.init(
            address=address,
            namespace=NAMESPACE,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=False,
            runtime_env=runtime_env,
        )
    except ConnectionError as e:
        raise DstackRayError(
            f"cannot connect to the Ray cluster at {address}: {e}",
            hint="check the address (`--address` or RAY_ADDRESS), or unset it to use the local head",
        ) from None


def _shipped_runtime_env(extra: Sequence[Path] = ()) -> Dict[str, Any]:
    """dstack-ray (and its small pure-Python dependencies) as `py_modules`: Ray uploads them and
    installs them wherever this driver's actors and tasks run."""
    from dstack_ray.service import ship

    return {"py_modules": [str(path) for path in (*ship.code_bundle().top_level(), *extra)]}


def _ship_what_the_cluster_lacks(address: str) -> None:
    """Before this driver creates the Controller, the cluster's Python is checked as the
    service's preflight does (in a task); what it lacks is added to the driver's runtime
    environment (this client's copies where the platform matches, else Ray's pip), which takes
    a second connection. uv is not shipped on this path (jobs' venvs then use `python -m venv`)."""
    import ray

    from dstack_ray.runtime.settings import named_controller
    from dstack_ray.service import client as service
    from dstack_ray.service import preflight, ship

    if named_controller() is not None:
        return  # made already, with its own environment
    needs = os.environ.get(preflight.NEEDS_ENV, "")
    report = ray.get(ray.remote(num_cpus=0)(preflight.report).remote(needs), timeout=300)
    if report["problems"]:
        ray.shutdown()
        raise service.unusable_python(report, "the cluster's `python`")
    if not report["missing"]:
        return
    ray.shutdown()
    if ship.matches_here(report["platform"]):
        runtime_env = _shipped_runtime_env(ship.dependency_bundle([m["name"] for m in report["missing"]]).top_level())
    else:
        runtime_env = {**_shipped_runtime_env(), "pip": {"packages": ship.requirement_specs(report["missing"]), "pip_check": False}}
    logger.info("the cluster's Python lacks %s: shipping them with this driver", ship.describe_missing(report["missing"]))
    _ray_init(address, runtime_env)
    check = ray.get(ray.remote(num_cpus=0)(preflight.report).remote(needs), timeout=600)
    if check["missing"]:
        ray.shutdown()
        raise service.missing_packages(check, "they are still missing after shipping them with this driver")


def _ray_driver() -> bool:
    """Is this process a Ray driver already (a Ray application)?"""
    ray = sys.modules.get("ray")
    return ray is not None and hasattr(ray, "is_initialized") and ray.is_initialized()


def _code_in_gcs() -> Dict[str, Any]:
    """dstack-ray's code bundle in the cluster's package store (Ray's own upload, the one its
    job SDK makes through the Jobs API), as a runtime environment for an actor."""
    from ray._private.runtime_env.packaging import package_exists, upload_package_to_gcs  # Ray >=2.60,<2.61

    from dstack_ray.service import ship

    uri, data = ship.code_bundle().packed()
    if not package_exists(uri):
        upload_package_to_gcs(uri, data)
    return {"py_modules": [uri]}


def _start_service_for_this_cluster() -> bool:
    """Inside a Ray application: make sure the cluster's service runs, so that the Controller
    belongs to it and not to this application's job (whose end would leave every task the
    Controller starts later attributed to a finished job). False: there is no Controller and
    no service (no dashboard, or the service did not start): the caller makes the Controller."""
    import ray

    if named_controller() is not None:
        return True
    from dstack_ray import local_head
    from dstack_ray.service import client as service

    context = ray.get_runtime_context()
    head = local_head.head_at(context.gcs_address)
    on_head = any(n.get("NodeID") == context.get_node_id() and "node:__internal_head__" in n.get("Resources", {}) for n in ray.nodes())
    try:
        if head is not None:
            return bool(local_head.service_url(head))
        # an application on the head node runs the Python the head has
        return service.service_for_ray_address(context.gcs_address, service.auth_token(), sys.executable if on_head else None) is not None
    except DstackRayError as e:
        logger.warning("the dstack-ray service could not be started (%s); this application creates the controller", e)
        return False


def _service_url(address: Optional[str]) -> Optional[str]:
    """The service's URL for a Ray `address`, or the local head's. None: a cluster without a
    dashboard, reached as a Ray driver instead."""
    from dstack_ray import local_head
    from dstack_ray.service import client as service

    if address:
        head = local_head.head_at(address)  # the local head's service listens on loopback only
        return local_head.service_url(head) if head else service.service_for_ray_address(address, service.auth_token())
    return local_head.answering_service() or local_head.service_url(local_head.status() or local_head.start())


def pack_payload(cfg: TaskConfiguration) -> Optional[RunPayload]:
    """`files` and `repos` packed here, on the client, relative to the configuration file."""
    if not cfg.files and not cfg.repos:
        return None
    from dstack_ray.exec.archive import pack_files
    from dstack_ray.exec.repo import prepare_repo

    if cfg.source_file is None and any(not Path(os.path.expanduser(f.local_path)).is_absolute() for f in cfg.files):
        raise ConfigurationError(
            "relative paths in `files` need a configuration file to resolve against",
            path="files",
            hint="use absolute paths, or load the configuration from a .dstack.yml file",
        )
    config_dir = Path(cfg.source_file).resolve().parent if cfg.source_file else Path.cwd()
    repo = prepare_repo(cfg.repos[0], config_dir, cfg.single_branch) if cfg.repos else None
    payload = RunPayload(files=pack_files(cfg.files, config_dir), repo=repo)
    total = sum(len(f.data) for f in payload.files)
    if repo is not None:
        total += len(repo.diff) + len(repo.tree or b"")
    limit = payload_limit()
    if limit and total > limit:
        raise ConfigurationError(
            f"`files` and `repos` add up to {total} bytes, over the limit of {limit} bytes per run"
            " (each is stored on the head node and sent to every node)",
            path="files" if cfg.files else "repos",
            file=cfg.source_file,
            hint=f"ship less (.dstackignore), or raise {PAYLOAD_LIMIT_ENV} (0: no limit)",
        )
    return payload


def _registry_auth_value(text: str, field: str, env: Mapping[str, str], cfg: TaskConfiguration) -> str:
    """`${{ env.X }}` in `registry_auth` from the configuration's `env` (and `-e`), as dstack
    reads it. A value without `${{` is taken as written (`$$` stays `$$`), and no error repeats
    any part of the value: it is a secret."""
    where = dict(path=f"registry_auth.{field}", file=cfg.source_file, line=cfg.source_line(("registry_auth", field)))
    if "${{" not in text:
        return text
    if "secrets." in text:
        raise ConfigurationError(
            "`${{ secrets.* }}` is not supported: dstack-ray has no secrets store",
            hint="put the value in `env` (or pass `-e NAME=VALUE`) and use `${{ env.NAME }}`",
            **where,
        )
    try:
        return interpolate(text, {"env": env})
    except ConfigurationError as e:
        missing = "missing vars" in str(e)
        raise ConfigurationError(
            "refers to a variable the configuration's `env` does not set" if missing else "invalid `${{ }}` reference",
            hint="set it in `env` or pass `-e NAME=VALUE`; write `$${{` for a literal `${{`",
            **where,
        ) from None


class Client:
    """Submits dstack tasks to a Ray cluster and finds their runs.

    `address`: the dstack-ray service's URL (`http://host:8270`), or a Ray address (`host:port`,
    `auto`, `ray://...`) whose service is found, or started, through the cluster's Jobs API.
    Without it: $RAY_ADDRESS, else the embedded local head (`dstack-ray server start`), started
    when it is not running. Calls go over HTTP to the service (this process does not become a
    Ray driver). Inside a Ray application (`ray.init` was called), or with `settings` (the
    caller runs the Controller itself, e.g. with its own state directory), or on a cluster
    without a dashboard, the Client uses actor handles on this process's Ray connection.
    """

    def __init__(self, address: Optional[str] = None, settings: Optional[RuntimeSettings] = None) -> None:
        from dstack_ray.service.client import is_service_url

        self._settings = settings or RuntimeSettings()
        address = address or os.environ.get("RAY_ADDRESS") or None
        if is_service_url(address):
            url: Optional[str] = address
        elif _ray_driver() or settings is not None:
            url = None
        else:
            url = _service_url(address)
        if url is not None:
            self._controller: Any = _ServiceController(url)
        else:
            self._controller = _ActorController(address, self._settings, create=settings is not None)

    def address_text(self) -> str:
        """Where this client is connected, for plans and messages."""
        from dstack_ray import local_head

        head = local_head.status()
        if head is not None and head.service == self._controller.address_text():
            return f"local head {head.address} (dashboard {head.dashboard_url})"
        return self._controller.address_text()

    # -- configurations and plans ---------------------------------------------------------------

    @staticmethod
    def load(configuration: ConfigurationInput, profile: Optional[str] = None, no_profile: Optional[bool] = None) -> TaskConfiguration:
        """A configuration from a path, a dict or a TaskConfiguration (as is)."""
        if isinstance(configuration, TaskConfiguration):
            return configuration
        if isinstance(configuration, Mapping):
            return parse_configuration(dict(configuration))
        return load_configuration(configuration, profile=profile, no_profile=no_profile)

    def cluster_view(self) -> ClusterView:
        view: ClusterView = self._controller.call("cluster_view")
        if self._settings.default_image:  # this client's own default image wins
            view.default_image = self._settings.default_image
        return view

    def plan(self, cfg: TaskConfiguration) -> RunPlan:
        cluster = self.cluster_view()
        self._check_host_mode(cfg, cluster)
        return build_plan(cfg, cluster)

    @functools.cached_property
    def _cluster(self) -> ClusterView:
        """The cluster as first seen by this client (its image for tasks without one, which
        nodes give jobs a private view)."""
        return self.cluster_view()

    @staticmethod
    def _check_host_mode(cfg: TaskConfiguration, cluster: ClusterView) -> None:
        """A task that will run on the Ray node itself (no `image`, no cluster default image)
        may only write inside its own directories or, on nodes that give jobs a private view,
        elsewhere in that view: refuse other targets before submission."""
        if cfg.image is None and not cfg.docker and cluster.default_image is None:
            views = cluster.autoscaling or any(n.job_view is not False for n in cluster.alive_nodes)
            check_host_paths(cfg, views=views)

    def offers(self, configuration: ConfigurationInput, catalog: bool = True) -> Offers:
        """Where the task could run: this cluster's nodes and autoscaler node types that fit a
        node of it, then (with the skypilot extra and its catalog on disk) cloud instances."""
        return offers_for(self.load(configuration), self.cluster_view(), catalog)

    @staticmethod
    def prepare(
        cfg: TaskConfiguration,
        name: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        args: Sequence[str] = (),
        environ: Optional[Mapping[str, str]] = None,
    ) -> TaskConfiguration:
        """The configuration as it will run: name and env overrides applied, required env taken
        from `environ` (default: this process), `${{ run.args }}` substituted in commands."""
        environ = os.environ if environ is None else environ
        updates: Dict[str, Any] = {}
        if name:
            updates["name"] = name
        merged = dict(cfg.env.root)
        for key, value in (env or {}).items():
            merged[key] = value
        resolved = {k: (environ[k] if isinstance(v, EnvSentinel) and k in environ else v) for k, v in merged.items()}
        missing = sorted(k for k, v in resolved.items() if isinstance(v, EnvSentinel))
        if missing:
            raise ConfigurationError(
                f"Environment variable{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
                f" {'are' if len(missing) > 1 else 'is'} not set",
                path="env",
                file=cfg.source_file,
                line=cfg.source_line(("env",)),
                hint="export them, or pass `-e NAME=VALUE`",
            )
        updates["env"] = resolved
        namespaces = {"run": {"args": shlex.join(list(args))}}
        interpolate_in = lambda text: interpolate(text, namespaces, skip=("groups", "secrets"))  # noqa: E731
        if cfg.groups is None:
            updates["commands"] = [interpolate_in(c) for c in cfg.commands]
        else:
            updates["groups"] = [g.model_copy(update={"commands": [interpolate_in(c) for c in g.commands]}) for g in cfg.groups]
        if cfg.registry_auth is not None:
            configured = {k: v for k, v in resolved.items() if isinstance(v, str)}
            updates["registry_auth"] = cfg.registry_auth.model_copy(
                update={
                    field: _registry_auth_value(getattr(cfg.registry_auth, field), field, configured, cfg)
                    for field in ("username", "password")
                }
            )
        # exclude_unset keeps track of what the user wrote (the plan notes depend on it).
        prepared = TaskConfiguration.model_validate({**cfg.model_dump(exclude_unset=True), **updates})
        prepared.set_source(cfg.source_file, cfg._source_lines)
        check_submittable(prepared)
        return prepared

    # -- runs -----------------------------------------------------------------------------------

    def apply(
        self,
        configuration: ConfigurationInput,
        name: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        args: Sequence[str] = (),
        *,
        replace: bool = False,
    ) -> "Run":
        """Submit a task and return its run. With `replace`, an active run of the same name is
        stopped first (otherwise that is an error)."""
        return self.submit(self.prepare(self.load(configuration), name=name, env=env, args=args), args=args, replace=replace)

    def submit(self, cfg: TaskConfiguration, args: Sequence[str] = (), *, replace: bool = False) -> "Run":
        """Submit a configuration that `prepare` made ready (it is not prepared again: dstack
        undoes `$${{` escapes once), as `apply` does; `args` are recorded with the run."""
        self._check_host_mode(cfg, self._cluster)
        if replace and cfg.name:
            existing = self.find_run(cfg.name)
            if existing is not None and not existing.status.is_finished():
                existing.stop()
                existing.wait(timeout=self._settings.stop_grace_seconds + 60)
        payload = pack_payload(cfg)
        spec = RunSpec(
            run_name=cfg.name or "",
            configuration=cfg.model_dump(mode="json", exclude_unset=True),
            configuration_path=cfg.source_file,
            args=list(args),
            container_runtime=self._settings.container_runtime,
            default_image=self._settings.default_image,
            submission_id=uuid.uuid4().hex,
            has_payload=payload is not None,
        )
        payload_json = payload.model_dump_json() if payload is not None else None
        record = self._controller.call("submit", spec=spec.model_dump(mode="json"), payload=payload_json)
        return Run(self, record)

    def find_run(self, name: str) -> Optional["Run"]:
        record = self._controller.call("get_run", name=name)
        return Run(self, record) if record else None

    def get_run(self, name: str) -> "Run":
        run = self.find_run(name)
        if run is None:
            raise DstackRayError(f"run {name} not found", hint="list runs with `dstack-ray ps -a`")
        return run

    def list_runs(self, all: bool = True, limit: Optional[int] = None) -> List["Run"]:
        """Runs, newest first: every run (`all`) or the active ones; at most `limit` of them.
        Without a limit, the history is fetched page by page."""
        if not all:
            return [Run(self, r) for r in self._controller.call("list_runs", limit=limit, active_only=True)]
        runs: List[Run] = []
        for run in self.iter_runs(min(limit, LIST_PAGE) if limit else LIST_PAGE):
            if limit is not None and len(runs) >= limit:
                break
            runs.append(run)
        return runs

    def iter_runs(self, page_size: int = LIST_PAGE) -> Iterator["Run"]:
        """Every run, newest first, fetched `page_size` at a time."""
        before: Tuple[Optional[str], Optional[str]] = (None, None)
        while True:
            page = self._controller.call("list_runs", limit=page_size, before_at=before[0], before_id=before[1])
            for record in page:
                yield Run(self, record)
            if len(page) < page_size:
                return
            before = (page[-1].submitted_at.isoformat(), page[-1].id)


class Run:
    """A handle on one run; properties read the last known state (`refresh()` updates it)."""

    def __init__(self, client: Client, record: RunRecord) -> None:
        self._client = client
        self._record = record

    def __repr__(self) -> str:
        return f"Run(name={self.name!r}, status={self.status.value!r})"

    @property
    def record(self) -> RunRecord:
        return self._record

    @property
    def name(self) -> str:
        return self._record.name

    @property
    def id(self) -> str:
        return self._record.id

    @property
    def status(self) -> RunStatus:
        return self._record.status

    @property
    def status_message(self) -> str:
        return self._record.display_status()

    @property
    def termination_reason(self) -> Optional[RunTerminationReason]:
        return self._record.termination_reason

    @property
    def error(self) -> Optional[str]:
        return self._record.error

    @property
    def jobs(self) -> List[JobRecord]:
        return list(self._record.jobs)

    @property
    def configuration(self) -> TaskConfiguration:
        if self._record.spec is None:  # a listed run: listings leave the spec out
            self.refresh()
        return self._record.spec.configuration

    def refresh(self) -> "Run":
        record = self._client._controller.call("get_run", name=self.id)
        if record:
            self._record = record
        return self

    def wait_change(self, timeout: float = 10.0) -> "Run":
        """Block until the run changes (or `timeout` passes)."""
        record = self._client._controller.call("wait_run", run_id=self.id, version=self._record.version, timeout=timeout)
        if record:
            self._record = record
        return self

    def wait(self, timeout: Optional[float] = None) -> RunStatus:
        """Wait until the run finishes; returns its final status (or the current one on timeout)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.status.is_finished():
            left = 10.0 if deadline is None else min(10.0, deadline - time.monotonic())
            if left <= 0:
                break
            self.wait_change(left)
        return self.status

    def stop(self, abort: bool = False) -> "Run":
        self._record = self._client._controller.call("stop_run", name=self.id, abort=abort)
        return self

    def delete(self) -> None:
        self._client._controller.call("delete_run", name=self.id)

    def relay_connection(self, port: int, sock: socket.socket) -> None:
        """Carry a TCP connection (`sock`) to `port` on the run's rank-0 node through the
        service, until both sides closed (what `attach` does when the node is out of reach)."""
        self._client._controller.relay(self.id, port, sock)

    def metrics(self, since_seconds: Optional[float] = None, jobs: bool = False) -> List[MetricsSample]:
        """GPU samples of the latest attempt, oldest first (`kind` "gpu": rank, gpu, utilization,
        memory_used, memory_total). With `jobs`, also each job's CPU and memory samples (`kind`
        "job": cpu_percent, memory_bytes)."""
        samples: List[MetricsSample] = self._client._controller.call("metrics", name=self.id, since_seconds=since_seconds)
        return samples if jobs else [s for s in samples if s.kind != "job"]

    def events(self) -> List[Tuple[datetime, str]]:
        return [(datetime.fromisoformat(at), msg) for at, msg in self._client._controller.call("events", name=self.id)]

    def jobs_history(self) -> List[JobRecord]:
        """Every job of every attempt, oldest first."""
        return self._client._controller.call("jobs_history", name=self.id)

    def logs(
        self,
        rank: int = 0,
        follow: bool = False,
        attempt: Optional[int] = None,
        since: Optional[datetime] = None,
        partial: bool = False,
    ) -> Iterator[LogLine]:
        """The output lines of one node (rank) of an attempt (default: the latest).

        With `follow`, keeps yielding new lines until that node has ended and everything it
        wrote was read. With `partial`, pieces of lines still being written are yielded as they
        arrive (`line.partial`; print them without a newline): progress bars show live.
        """
        run_attempt = self._record.attempt if attempt is None else attempt
        joiner = LineJoiner()
        rest = b""  # a record cut by the chunk boundary: completed by the next chunk
        for chunk in self._client._controller.log_chunks(self.id, run_attempt, rank, follow):
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            data, rest = data[:cut], data[cut:]
            for piece in pieces(data):
                for record in parse_records(piece, rank):
                    line = record if partial else joiner.feed(record)
                    if line is not None and (since is None or line.time >= since):
                        yield line
        last = joiner.flush()
        if last is not None and (since is None or last.time >= since):
            yield last
