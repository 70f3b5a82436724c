"""Forwarding local ports to the rank-0 node of a run, while attached.

Each mapping listens on 127.0.0.1 only. A connection goes straight to `<rank-0 IP>:<port>` when
that address answers from here; otherwise it is relayed by the dstack-ray service on the head
(a websocket per connection), for clusters whose node addresses this machine cannot reach.

Where rank 0 runs on this very machine (the embedded local head), the job's port is already
here: a mapping to the same port binds nothing (binding it first would take the port from the
job), and another local port is forwarded as usual. Until the port answers, connections are
closed quietly; `watch` says once when it does, or that the run ended first.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from typing import Any, Callable, List, Optional, Tuple

from dstack_ray.config.ports import PortMapping

logger = logging.getLogger(__name__)

CHUNK = 256 * 1024
RELAY_ENV = "DSTACK_RAY_PORT_RELAY"  # "always": relay even when the node is reachable (tests)
PROBE_TIMEOUT = 5.0


class PortInUseError(Exception):
    def __init__(self, port: int, container_port: int) -> None:
        super().__init__(f"port {port} is already in use on this machine")
        self.port = port
        self.container_port = container_port


def is_this_machine(ip: str) -> bool:
    """Whether `ip` is one of this machine's own addresses (a socket can be bound to it)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if address.is_loopback:
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((ip, 0))
        except OSError:
            return False
    return True


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.5):
            return True
    except OSError:
        return False


class PortForwarder:
    """Listens on local ports and forwards each connection to the run's rank-0 node. Made once
    the rank-0 node is known (`node_ip`): mappings whose port is already here are `direct`."""

    def __init__(self, run: Any, mappings: List[PortMapping], node_ip: Optional[str] = None, relay: Optional[bool] = None) -> None:
        import os

        self._run = run
        self._force_relay = relay if relay is not None else os.environ.get(RELAY_ENV) == "always"
        local = not self._force_relay and node_ip is not None and is_this_machine(node_ip)
        # The job's own port on this machine: nothing to bind, nothing to forward.
        self.direct = [m.container_port for m in mappings if local and m.local_port in (None, m.container_port)]
        self._mappings = [m for m in mappings if m.container_port not in self.direct]
        self._listeners: List[Tuple[socket.socket, int, int]] = []
        self._stopped = threading.Event()
        self._bind()

    def _bind(self) -> None:
        for mapping in self._mappings:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", mapping.local_port or 0))
            except OSError:
                sock.close()
                self.stop()
                raise PortInUseError(mapping.local_port or 0, mapping.container_port) from None
            sock.listen(64)
            self._listeners.append((sock, sock.getsockname()[1], mapping.container_port))

    def bound(self) -> List[Tuple[int, int]]:
        """(local port, container port) pairs actually listening."""
        return [(local, remote) for _, local, remote in self._listeners]

    def start(self) -> None:
        for sock, _, remote in self._listeners:
            threading.Thread(target=self._accept, args=(sock, remote), daemon=True, name="dstack-forward").start()

    def answers(self, port: int) -> bool:
        """Whether the run's `port` on rank 0 accepts a connection now (through the relay where
        the node is out of reach)."""
        try:
            ip = self._target()
        except Exception:  # noqa: BLE001 - not placed yet, or the service is restarting
            return False
        if self._direct(ip, port) is not None:
            return True
        if not self._force_relay and is_this_machine(ip):
            return False  # the job is here: nothing for the relay to reach either
        mine, theirs = socket.socketpair()
        failed: List[BaseException] = []

        def relay() -> None:
            try:
                self._run.relay_connection(port, theirs)
            except Exception as e:  # noqa: BLE001 - refused upstream (502) or by the service
                failed.append(e)

        mine.shutdown(socket.SHUT_WR)  # nothing to send: the relay ends once the port closes
        attempt = threading.Thread(target=relay, daemon=True)
        attempt.start()
        attempt.join(PROBE_TIMEOUT)  # still relaying then: it connected
        mine.close()
        theirs.close()
        return not failed

    def watch(self, say: Callable[[str], None], interval: float = 1.0) -> None:
        """In the background: say once when each port answers, or that the run ended first."""

        def follow() -> None:
            waiting = [*self.direct, *(remote for _, _, remote in self._listeners)]
            while waiting and not self._stopped.is_set():
                for port in list(waiting):
                    if self.answers(port):
                        waiting.remove(port)
                        say(f"port {port} answers: http://127.0.0.1:{self._local_of(port)}")
                if not waiting:
                    return
                if self._run.refresh().status.is_finished():
                    if not self._stopped.is_set():
                        say(f"the run ended before port{'s' if len(waiting) > 1 else ''} {', '.join(map(str, waiting))} answered")
                    return
                self._stopped.wait(interval)

        threading.Thread(target=follow, daemon=True, name="dstack-forward-watch").start()

    def _direct(self, ip: str, port: int) -> Optional[str]:
        """The address to reach rank 0's `port` at straight from here, or None (relay it)."""
        if self._force_relay:
            return None
        if is_this_machine(ip) and _reachable("127.0.0.1", port):
            return "127.0.0.1"  # the job is here: an app may listen on loopback only
        return ip if _reachable(ip, port) else None

    def _local_of(self, port: int) -> int:
        return next((local for _, local, remote in self._listeners if remote == port), port)

    def stop(self) -> None:
        self._stopped.set()
        for sock, _, _ in self._listeners:
            try:
                sock.close()
            except OSError:
                pass

    def _target(self) -> str:
        jobs = self._run.refresh().jobs
        if not jobs or not jobs[0].node_ip:
            raise ConnectionError("the run's rank-0 node is not known yet")
        return jobs[0].node_ip

    def _accept(self, listener: socket.socket, remote_port: int) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client, remote_port), daemon=True).start()

    def _serve(self, client: socket.socket, remote_port: int) -> None:
        try:
            address = self._direct(self._target(), remote_port)
            if address is not None:
                upstream = socket.create_connection((address, remote_port), timeout=10)
                upstream.settimeout(None)
                _pipe_sockets(client, upstream)
            else:
                self._run.relay_connection(remote_port, client)
        except Exception as e:  # not up yet, most often: `watch` says when it is
            logger.debug("forwarding to port %s failed: %s", remote_port, e)
        finally:
            client.close()


def _pipe_sockets(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until both directions reached end of stream."""

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    other = threading.Thread(target=pump, args=(b, a), daemon=True)
    other.start()
    pump(a, b)
    other.join()
    b.close()
