"""The service process (`python -m dstack_ray.service`): owns the Controller and serves the HTTP API.

It runs as a Ray Job driver on the head node, so the Controller it creates — and everything the
Controller starts: the supervisor host, node agents, their tasks — belongs to this live job
(a Controller made by a short-lived client would leave every later task attributed to a job that
already ended, which the dashboard then shows as FAILED).

The API (JSON; run names or ids in paths): one route per operation of `models/api.py`
(`OPERATIONS`: the cluster view, runs listed, submitted, read, waited for, stopped, deleted,
their events, jobs and metrics), made by `Service._handler`, and four written here:
  GET    /api/health                      {"service": "dstack-ray", "version", "api_version", "auth", "exposed"} (no token needed)
  POST   /api/offers?catalog=             {"configuration": {...}} -> where it could run
  GET    /api/runs/{name}/logs?rank=&attempt=&offset=&follow=   the stored log records, streamed
                                          (`<timestamp> <text>` lines); with follow, until the job ended
  GET    /api/runs/{name}/ports/{port}    websocket: a TCP connection to that port on the run's rank-0 node
Refusals are `{"error", "hint"}` with the status of their kind (`dstack_ray.errors`).
With Ray's token authentication on, every request but health needs `Authorization: Bearer <token>`.
What a web browser may not do, and where the service listens: `exposure.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from typing import Any, Awaitable, Callable, Dict, Optional

import aiohttp
import ray
from aiohttp import web
from pydantic import ValidationError

from dstack_ray import __version__
from dstack_ray.config import ConfigurationError, parse_configuration
from dstack_ray.models.cluster import ClusterView
from dstack_ray.plan.catalog import offers_for
from dstack_ray.errors import ApiError, Conflict, Forbidden, InvalidInput, NotFound, NotReady, TooLarge, invalid_fields
from dstack_ray.models.api import OPERATIONS, Operation
from dstack_ray.models.runs import RunRecord, declared_ports
from dstack_ray.runtime.controller import controller_handle
from dstack_ray.runtime.settings import NAMESPACE, RuntimeSettings
from dstack_ray.service import API_VERSION, AUTO, DEFAULT_SERVICE_PORT, JOB_NAME, OPEN_WARNING, PAYLOAD_LIMIT_ENV, SERVICE_PORT_ENV, payload_limit
from dstack_ray.service.exposure import allowed_host_names, bind_like_dashboard, browser_guard, dashboard_address, is_loopback, json_error

logger = logging.getLogger(__name__)

RELAY_CHUNK = 256 * 1024
LOG_WAIT = 5.0  # seconds one read of a followed log waits for new lines
NO_LIMIT_CAP = 1 << 30  # a limit of 0 ("none") still stops at 1 GiB


def max_request(environ: Optional[Dict[str, str]] = None) -> int:
    """The largest request the service reads: an apply's packed files (base64 in JSON: 4/3 of
    the payload limit) and its spec."""
    limit = payload_limit(environ)
    return NO_LIMIT_CAP if limit == 0 else limit * 4 // 3 + (4 << 20)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _token_auth() -> Any:
    """Ray's own check of its token (a no-op when the cluster's token authentication is off)."""
    from ray._private.authentication.http_token_authentication import get_token_auth_middleware

    return get_token_auth_middleware(aiohttp, whitelisted_exact_paths=["/api/health"])


def _token_auth_on() -> bool:
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    return is_token_auth_enabled()


def _flag(value: Optional[str]) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def _number(request: web.Request, name: str, kind: Callable[[str], Any] = int, default: Any = None, minimum: Optional[float] = None) -> Any:
    """A query parameter as a number (at least `minimum`); a malformed one is an InvalidInput
    naming it."""
    text = request.query.get(name)
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise InvalidInput(f"query parameter `{name}` must be a{'n integer' if kind is int else ' number'}") from None
    if minimum is not None and value < minimum:
        raise InvalidInput(f"query parameter `{name}` must be {minimum} or more")
    return value


async def _body(request: web.Request, *required: str) -> Dict[str, Any]:
    """The JSON object a request carries, with its `required` fields (else InvalidInput)."""
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        raise InvalidInput("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    missing = [name for name in required if name not in body]
    if missing:
        raise InvalidInput(f"the request body lacks {', '.join(missing)}")
    return body


class Service:
    """The API's handlers: each is a thin call of the Controller."""

    def __init__(self, controller: Any, exposed: bool = False) -> None:
        self.controller = controller
        self.exposed = exposed  # listening beyond loopback
        self.max_request = max_request()

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refusals as JSON a client can show: {"error", "hint"} with the status of their type
        (dstack_ray.errors); anything else is a bug: logged with its traceback, answered with
        a short 500 (no traceback leaves the service)."""
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return json_error(
                TooLarge.status,
                f"the request is larger than the service takes ({self.max_request >> 20} MiB)",
                f"ship fewer files with the run (.dstackignore), or raise {PAYLOAD_LIMIT_ENV} where the service starts",
            )
        except web.HTTPException:
            raise
        except ApiError as e:
            return json_error(e.status, str(e), e.hint)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, ApiError):
                return json_error(cause.status, str(cause), cause.hint)
            logger.error("the controller failed on %s %s: %s", request.method, request.path, e)
            return json_error(500, "the dstack-ray controller failed on this request", "see the `dstack-ray` job's log in the Ray dashboard")
        except ray.exceptions.RayActorError:
            # Restarting (Ray retries), or gone for good (killed): then a new one is made from
            # the store, as the first service of a cluster makes it.
            logger.warning("the controller did not answer; looking it up again")
            self.controller = await asyncio.get_running_loop().run_in_executor(None, controller_handle, RuntimeSettings())
            return json_error(NotReady.status, "the dstack-ray controller is restarting", "try again in a few seconds")
        except Exception:
            logger.exception("the service failed on %s %s", request.method, request.path)
            return json_error(500, "the dstack-ray service failed on this request", "see the `dstack-ray` job's log in the Ray dashboard")

    def app(self) -> web.Application:
        app = web.Application(middlewares=[browser_guard(allowed_host_names()), _token_auth(), self._errors], client_max_size=self.max_request)
        app.add_routes(
            [
                web.get("/api/health", self.health),
                web.post("/api/offers", self.offers),
                *(web.route(op.method, op.path, self._handler(op)) for op in OPERATIONS.values()),
                web.get("/api/runs/{name}/logs", self.logs),
                web.get("/api/runs/{name}/ports/{port}", self.relay),
            ]
        )
        return app

    def _handler(self, op: Operation) -> Handler:
        """The route of one operation (models/api.py): its arguments from the path and the query
        (GET, DELETE) or the JSON body, checked by the operation's model, then the Controller's
        method of the same name."""

        async def handle(request: web.Request) -> web.Response:
            given = dict(request.query) if op.in_query else await _body(request)
            try:
                arguments = op.arguments.model_validate(given).model_dump()
            except ValidationError as e:
                raise invalid_fields("request", e.errors(include_input=False)) from None
            arguments.update({name: request.match_info[name] for name in op.path_names})
            answer = await getattr(self.controller, op.name).remote(**arguments)
            if answer is None and op.missing_ok:
                run = request.match_info.get("name") or request.match_info.get("run_id")
                raise NotFound(f"run {run} not found", "list runs with `dstack-ray ps -a`")
            return web.json_response(answer)

        return handle

    async def _run(self, request: web.Request) -> Dict[str, Any]:
        name = request.match_info["name"]
        run = await self.controller.get_run.remote(name)
        if run is None:
            raise NotFound(f"run {name} not found", "list runs with `dstack-ray ps -a`")
        return run

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"service": JOB_NAME, "version": __version__, "api_version": API_VERSION, "auth": _token_auth_on(), "exposed": self.exposed}
        )

    async def offers(self, request: web.Request) -> web.Response:
        """{"configuration": a task configuration} -> the offers (`?catalog=1`: with the
        catalogs on the head); an invalid configuration is a 400 naming the field."""
        body = await _body(request, "configuration")
        try:
            cfg = parse_configuration(body["configuration"])
        except ConfigurationError as e:
            raise InvalidInput(str(e)) from None  # the message names the field (and a hint)
        cluster = ClusterView.model_validate(await self.controller.cluster_view.remote())
        return web.json_response(offers_for(cfg, cluster, catalog=_flag(request.query.get("catalog"))).model_dump(mode="json"))

    async def logs(self, request: web.Request) -> web.StreamResponse:
        rank = _number(request, "rank", int, 0, minimum=0)  # all checked before the answer starts
        offset = _number(request, "offset", int, 0, minimum=0)
        run = await self._run(request)
        attempt = _number(request, "attempt", int, run["attempt"], minimum=0)
        if attempt > run["attempt"]:
            raise InvalidInput(f"query parameter `attempt`: run {run['name']} has attempts 0 to {run['attempt']}")
        follow = _flag(request.query.get("follow"))
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        while True:
            data, offset, final = await self.controller.read_logs.remote(run["id"], attempt, rank, offset, LOG_WAIT if follow else 0.0)
            if data:
                await response.write(data)
            if final or (not follow and not data):
                break
        await response.write_eof()
        return response

    async def relay(self, request: web.Request) -> web.StreamResponse:
        """One TCP connection to a port of the rank-0 node, carried in binary websocket
        messages; a text message `eof` from the client closes its sending side. Only an active
        run's declared ports (of rank 0's node group) are reached; anything else is refused
        before connecting."""
        try:
            port = int(request.match_info["port"])
        except ValueError:
            raise InvalidInput("the port must be an integer") from None
        if not 1 <= port <= 65535:
            raise InvalidInput(f"port {port} is not a TCP port (1-65535)")
        run = RunRecord.model_validate(await self._run(request))
        if run.status.is_finished():
            raise Conflict(f"run {run.name} is {run.status.value}: its ports are closed", "only an active run's ports can be forwarded")
        declared = declared_ports(run)
        if port not in declared:
            shown = ", ".join(map(str, sorted(declared))) or "none"
            raise Forbidden(f"port {port} is not one of run {run.name}'s ports ({shown})", "add it to `ports` in the run's configuration")
        if not run.jobs or not run.jobs[0].node_ip:
            raise Conflict(f"run {run.name} has no rank-0 node yet", "wait until it is running")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(run.jobs[0].node_ip, port), 10)
        except (OSError, asyncio.TimeoutError) as e:
            return json_error(502, f"cannot connect to port {port} of run {run.name}: {e}")
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)

        async def upstream() -> None:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    writer.write(message.data)
                    await writer.drain()
                elif message.type == aiohttp.WSMsgType.TEXT and message.data == "eof":
                    writer.write_eof()
            writer.close()

        async def downstream() -> None:
            while True:
                data = await reader.read(RELAY_CHUNK)
                if not data:
                    break
                await ws.send_bytes(data)
            await ws.close()

        await asyncio.gather(upstream(), downstream(), return_exceptions=True)
        return ws


async def _exit_with_the_cluster(gcs_address: str, interval: float = 1.0) -> None:
    """End this process once the cluster's GCS stops answering (the head was stopped): a Ray
    Job's driver is not always killed with the head, and it would keep the API's port."""
    host, _, port = gcs_address.rpartition(":")
    misses = 0
    while True:
        await asyncio.sleep(interval)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), 5)
            writer.close()
            misses = 0
        except (OSError, asyncio.TimeoutError):
            misses += 1
            if misses >= 3:
                logger.warning("the cluster's GCS at %s is gone: the service stops", gcs_address)
                logging.shutdown()
                os._exit(0)


def _our_actors() -> list:
    """The names of dstack-ray's named actors (this process is in their namespace)."""
    return [name for name in ray.util.list_named_actors() if name.startswith("dstack:")]


def _retire_actors_of(version: Optional[str], timeout: float = 60) -> None:
    """The Controller, supervisor host and node agents another dstack-ray version left (their
    detached actors outlive its service job, and run its code): killed, so that this service
    makes its own. The client replaces a service only while no run is active (`server upgrade`);
    the store on the head keeps every run's records."""
    logger.warning("the cluster's dstack-ray actors run version %s: replacing them with %s", version, __version__)
    names = _our_actors()
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        except ValueError:
            pass  # gone already
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not set(names) & set(_our_actors()):
            return
        time.sleep(0.2)


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dstack_ray.service", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=AUTO, help="address to listen on (0.0.0.0: every interface; auto: where the dashboard listens)")
    parser.add_argument("--port", type=int, default=int(os.environ.get(SERVICE_PORT_ENV) or DEFAULT_SERVICE_PORT))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", namespace=NAMESPACE, log_to_driver=False)
    controller = controller_handle(RuntimeSettings())
    state = ray.get(controller.ping.remote())
    if state.get("version") != __version__:
        _retire_actors_of(state.get("version"))
        controller = controller_handle(RuntimeSettings())
        state = ray.get(controller.ping.remote())
    job_id = ray.get_runtime_context().get_job_id()
    if state.get("job_id") != job_id:
        logger.warning(
            "the controller was created by job %s, not by this service (%s): tasks it starts are attributed to that job",
            state.get("job_id"),
            job_id,
        )
    host = bind_like_dashboard(dashboard_address()) if args.host == AUTO else args.host
    logger.info("dstack-ray service %s on %s:%d (state in %s, token auth %s)", __version__, host, args.port, state["state_dir"], "on" if _token_auth_on() else "off")
    if not _token_auth_on() and not is_loopback(host):
        logger.warning(OPEN_WARNING, f"{host}:{args.port}")
    app = Service(controller, exposed=not is_loopback(host)).app()
    gcs_address = ray.get_runtime_context().gcs_address

    async def watch(app: web.Application) -> None:
        app["watchdog"] = asyncio.ensure_future(_exit_with_the_cluster(gcs_address))

    app.on_startup.append(watch)
    try:
        web.run_app(app, host=host, port=args.port, print=None, access_log=None)
    except OSError as e:
        logger.error("cannot listen on %s:%d: %s (another dstack-ray service? set %s)", host, args.port, e, SERVICE_PORT_ENV)
        sys.exit(1)
