"""Forwarding local ports to the rank-0 node of a run, while attached.

Each mapping listens on 127.0.0.1 only. A connection goes straight to `<rank-0 IP>:<port>` when
that address answers from here; otherwise it is relayed by the dstack-ray service on the head
(a websocket per connection), for clusters whose node addresses this machine cannot reach.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any, List, Optional, Tuple

from dstack_ray.config.ports import PortMapping

logger = logging.getLogger(__name__)

CHUNK = 256 * 1024
RELAY_ENV = "DSTACK_RAY_PORT_RELAY"  # "always": relay even when the node is reachable (tests)


class PortInUseError(Exception):
    def __init__(self, port: int, container_port: int) -> None:
        super().__init__(f"port {port} is already in use on this machine")
        self.port = port
        self.container_port = container_port


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.5):
            return True
    except OSError:
        return False


class PortForwarder:
    """Listens on local ports and forwards each connection to the run's rank-0 node."""

    def __init__(self, run: Any, mappings: List[PortMapping], relay: Optional[bool] = None) -> None:
        import os

        self._run = run
        self._mappings = mappings
        self._force_relay = relay if relay is not None else os.environ.get(RELAY_ENV) == "always"
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
            ip = self._target()
            if not self._force_relay and _reachable(ip, remote_port):
                upstream = socket.create_connection((ip, remote_port), timeout=10)
                upstream.settimeout(None)
                _pipe_sockets(client, upstream)
            else:
                self._run.relay_connection(remote_port, client)
        except Exception as e:
            logger.warning("forwarding to port %s failed: %s", remote_port, e)
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
