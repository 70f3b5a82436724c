"""Who can reach the service, and what it refuses from a web browser.

The service runs commands on the cluster, so it is exposed no more than Ray's own dashboard and
Jobs API, which can do the same:
- **Where it listens**: where the cluster's dashboard listens (`auto`, what clients ask for):
  `127.0.0.1` on Ray's default (`ray start --head` binds the dashboard to localhost), every
  interface where the dashboard listens on every interface. `DSTACK_RAY_SERVICE_HOST` on the
  client that starts the service asks for another address.
- **Browsers** (Ray's heuristic: a `Mozilla…` User-Agent, an Origin, Referer or Sec-Fetch-*
  header; a page cannot send a request without them): no writes, no websocket (the port relay),
  and the Host header must name the service by an IP address, `localhost`, the head's own host
  name, or a name in `DSTACK_RAY_SERVICE_ALLOWED_HOSTS` (a DNS-rebinding page names its own
  domain). Ray's dashboard refuses browser writes the same way; it has no Host check.
- **Writes carry JSON** (`Content-Type: application/json`): a page's form or `text/plain` post —
  which a browser sends cross-site without asking the server first — is refused (415).
Clients that are not browsers (the CLI, the Python API, curl) are not affected, whatever Host
they name.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, List, Optional, Set

from aiohttp import hdrs, web

from dstack_ray.service import ALLOWED_HOSTS_ENV


logger = logging.getLogger(__name__)

WRITES = {"POST", "PUT", "PATCH", "DELETE"}
_BROWSER_HEADERS = (
    "Origin",
    "Referer",
    "Sec-Fetch-Mode",
    "Sec-Fetch-Dest",
    "Sec-Fetch-Site",
    "Sec-Fetch-User",
    "Access-Control-Request-Method",
    "Access-Control-Request-Headers",
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_browser_request(headers: Any) -> bool:
    """Ray's heuristic (dashboard/optional_utils.py): browsers' User-Agents start with `Mozilla`
    and a page's fetch cannot change it; browsers also send these headers, other clients do not."""
    return headers.get("User-Agent", "").startswith("Mozilla") or any(name in headers for name in _BROWSER_HEADERS)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _hostname_of(host_header: str) -> str:
    """`name:port`, `[v6]:port`, `v4` -> the name, lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def allowed_host_names(extra: Optional[str] = None) -> Set[str]:
    """The names (besides IP addresses and localhost) a browser may use for the service: the
    head's host name and fully qualified name, and `extra` (comma-separated; `*`: any)."""
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    text = os.environ.get(ALLOWED_HOSTS_ENV, "") if extra is None else extra
    names.update(name.strip().lower() for name in text.split(",") if name.strip())
    return names


def host_allowed(host_header: Optional[str], names: Set[str]) -> bool:
    if not host_header:
        return False
    host = _hostname_of(host_header)
    return "*" in names or _is_ip(host) or host == "localhost" or host.endswith(".localhost") or host in names


def browser_guard(names: Set[str]) -> Any:
    """The middleware that refuses what a web page must not do (see the module's docstring)."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_browser_request(request.headers):
            if not host_allowed(request.host, names):
                return json_error(
                    403,
                    f"a browser request named the service as {request.host!r}, which is not one of its addresses",
                    f"open it by IP address or localhost, or add the name to {ALLOWED_HOSTS_ENV} on the service",
                )
            if request.method in WRITES or request.headers.get(hdrs.UPGRADE, "").lower() == "websocket":
                return json_error(405, f"'{request.method}' is not allowed for browser traffic", "use the dstack-ray CLI or Python API")
        if request.method in WRITES and request.can_read_body and request.content_type != "application/json":
            return json_error(415, "a request that changes something must carry JSON (Content-Type: application/json)", None)
        return await handler(request)

    return guard


def json_error(status: int, message: str, hint: Optional[str] = None) -> web.Response:
    """A refusal as the whole API answers one: `{"error", "hint"}` with its status."""
    return web.json_response({"error": message, "hint": hint}, status=status)


# -- where to listen ----------------------------------------------------------------------------

LOOPBACK = "127.0.0.1"
EVERY_INTERFACE = "0.0.0.0"


def _listening(port: int, tables: Iterable[Path] = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))) -> List[str]:
    """The local addresses this host listens on at `port` (Linux's socket tables)."""
    found = []
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != "0A":  # 0A: LISTEN
                continue
            address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) != port:
                continue
            raw = bytes.fromhex(address)
            if len(raw) == 4:
                found.append(socket.inet_ntop(socket.AF_INET, raw[::-1]))
            else:  # four little-endian 32-bit words
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                found.append(socket.inet_ntop(socket.AF_INET6, words))
    return found


def _as_bind(address: str) -> str:
    ip = ipaddress.ip_address(address)
    if ip.is_unspecified:
        return EVERY_INTERFACE
    if ip.is_loopback:
        return LOOPBACK
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def bind_like_dashboard(dashboard_address: Optional[str], tables: Optional[Iterable[Path]] = None) -> str:
    """Where the service listens when asked for `auto`: where the cluster's dashboard listens.
    `dashboard_address` is what the dashboard published in the GCS (`host:port`: its bind address
    when that is loopback, the node's IP otherwise). The head's socket table says exactly where
    it listens; without it, loopback stays loopback and anything else is every interface. No
    dashboard known: loopback (a client on another machine then needs `ssh -L`, or
    DSTACK_RAY_SERVICE_HOST)."""
    if not dashboard_address:
        return LOOPBACK
    host, _, port = dashboard_address.rpartition(":")
    host = host.strip("[]")
    try:
        listening = _listening(int(port), *(() if tables is None else (tables,)))
    except ValueError:
        listening = []
    if listening:
        binds = {_as_bind(address) for address in listening}
        if EVERY_INTERFACE in binds:
            return EVERY_INTERFACE
        if binds == {LOOPBACK}:
            return LOOPBACK
        return sorted(binds - {LOOPBACK})[0]
    try:
        return LOOPBACK if ipaddress.ip_address(host).is_loopback else EVERY_INTERFACE
    except ValueError:
        return LOOPBACK if host == "localhost" else EVERY_INTERFACE


def is_loopback(bind: str) -> bool:
    try:
        return ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        return bind == "localhost"


def dashboard_address() -> Optional[str]:
    """The dashboard's address as it published it in the GCS (this process is a Ray driver)."""
    from ray.experimental import internal_kv

    try:
        value = internal_kv._internal_kv_get("dashboard", namespace="dashboard")
    except Exception as e:  # noqa: BLE001 - no dashboard, or an older GCS layout: use loopback
        logger.info("the dashboard's address is not known (%s): the service listens on loopback", e)
        return None
    return value.decode() if value else None
