"""Forwarding local ports to the rank-0 node of a run, while attached.

Each mapping listens on 127.0.0.1 only. A connection goes straight to `<rank-0 IP>:<port>` when
that address answers from here; otherwise it is relayed through Ray by a small actor on the
rank-0 node (for clusters whose node addresses are not reachable from the user's machine).
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from typing import Any, Dict, List, Optional, Tuple

from dstack_ray.config.ports import PortMapping

logger = logging.getLogger(__name__)

CHUNK = 256 * 1024
RELAY_ENV = "DSTACK_RAY_PORT_RELAY"  # "always": relay even when the node is reachable (tests)


class PortInUseError(Exception):
    def __init__(self, port: int, container_port: int) -> None:
        super().__init__(f"port {port} is already in use on this machine")
        self.port = port
        self.container_port = container_port


class _Relay:
    """Runs on the target node: TCP connections opened and pumped on behalf of a client."""

    def __init__(self) -> None:
        self._conns: Dict[int, socket.socket] = {}
        self._next = 0
        self._lock = threading.Lock()

    def open(self, port: int) -> int:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.settimeout(None)
        with self._lock:
            self._next += 1
            self._conns[self._next] = sock
            return self._next

    def send(self, conn: int, data: bytes) -> None:
        sock = self._conns.get(conn)
        if sock is None:
            raise ConnectionError("closed")
        if data:
            sock.sendall(data)
        else:
            sock.shutdown(socket.SHUT_WR)

    def recv(self, conn: int, timeout: float = 1.0) -> Optional[bytes]:
        """Up to CHUNK bytes; b"" when nothing came within `timeout`; None at end of stream."""
        sock = self._conns.get(conn)
        if sock is None:
            return None
        ready, _, _ = select.select([sock], [], [], timeout)
        if not ready:
            return b""
        data = sock.recv(CHUNK)
        return data if data else None

    def close(self, conn: int) -> None:
        sock = self._conns.pop(conn, None)
        if sock is not None:
            sock.close()


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
        self._relay: Any = None
        self._relay_lock = threading.Lock()
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
        if self._relay is not None:
            import ray

            try:
                ray.kill(self._relay)
            except Exception:  # already gone
                pass
            self._relay = None

    def _target(self) -> Tuple[str, str]:
        jobs = self._run.refresh().jobs
        if not jobs or not jobs[0].node_ip:
            raise ConnectionError("the run's rank-0 node is not known yet")
        return jobs[0].node_ip, jobs[0].node_id or ""

    def _accept(self, listener: socket.socket, remote_port: int) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client, remote_port), daemon=True).start()

    def _serve(self, client: socket.socket, remote_port: int) -> None:
        try:
            ip, node_id = self._target()
            if not self._force_relay and _reachable(ip, remote_port):
                upstream = socket.create_connection((ip, remote_port), timeout=10)
                upstream.settimeout(None)
                _pipe_sockets(client, upstream)
            else:
                self._serve_relayed(client, remote_port, node_id)
        except Exception as e:
            logger.warning("forwarding to port %s failed: %s", remote_port, e)
        finally:
            client.close()

    def _relay_actor(self, node_id: str) -> Any:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        with self._relay_lock:
            if self._relay is None:
                actor = ray.remote(_Relay).options(
                    num_cpus=0,
                    max_concurrency=256,
                    name=None,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
                )
                self._relay = actor.remote()
            return self._relay

    def _serve_relayed(self, client: socket.socket, remote_port: int, node_id: str) -> None:
        import ray

        relay = self._relay_actor(node_id)
        conn = ray.get(relay.open.remote(remote_port))
        done = threading.Event()

        def upstream() -> None:
            try:
                while True:
                    data = client.recv(CHUNK)
                    ray.get(relay.send.remote(conn, data))
                    if not data:
                        return
            except Exception:
                done.set()

        sender = threading.Thread(target=upstream, daemon=True)
        sender.start()
        try:
            while not done.is_set() and not self._stopped.is_set():
                data = ray.get(relay.recv.remote(conn, 1.0))
                if data is None:
                    break
                if data:
                    client.sendall(data)
        finally:
            try:
                client.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            sender.join(timeout=5)
            relay.close.remote(conn)


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
