"""Port forwarding while attached (dstack_ray/forward.py), with a scripted run: where rank 0 is
this machine, the job's own port stays free for the job; forwarding says once when a port
answers, or that the run ended first, and nothing while it waits."""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace
from typing import List

from dstack_ray.config.ports import PortMapping
from dstack_ray.forward import PortForwarder, is_this_machine


class FakeRun:
    def __init__(self, ip: str) -> None:
        self.finished = False
        self.jobs = [SimpleNamespace(node_ip=ip)]

    def refresh(self):
        status = SimpleNamespace(is_finished=lambda: self.finished)
        return SimpleNamespace(jobs=self.jobs, status=status)

    def relay_connection(self, port, sock):
        raise ConnectionError("502")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_this_machines_addresses():
    assert is_this_machine("127.0.0.1") and is_this_machine("::1")
    assert not is_this_machine("192.0.2.123") and not is_this_machine("not-an-ip")


def test_the_jobs_own_port_on_this_machine_is_left_to_the_job():
    port, other = free_port(), free_port()
    forwarder = PortForwarder(FakeRun("127.0.0.1"), [PortMapping(local_port=port, container_port=port), PortMapping(local_port=None, container_port=other)], node_ip="127.0.0.1")
    try:
        assert forwarder.direct == [port, other] and forwarder.bound() == []
        with socket.socket() as job:  # the job binds its port on every interface, as http.server does
            job.bind(("0.0.0.0", port))
        moved = free_port()
        shifted = PortForwarder(FakeRun("127.0.0.1"), [PortMapping(local_port=moved, container_port=port)], node_ip="127.0.0.1")
        assert shifted.direct == [] and shifted.bound() == [(moved, port)]  # another local port: forwarded
        shifted.stop()
    finally:
        forwarder.stop()


def watching(run: FakeRun, port: int):
    """A forwarder of `port` (the job's own, here) whose watcher says into the list returned."""
    said: List[str] = []
    forwarder = PortForwarder(run, [PortMapping(local_port=port, container_port=port)], node_ip="127.0.0.1")
    forwarder.watch(said.append, interval=0.05)
    return forwarder, said


def test_a_port_is_announced_once_when_it_answers_and_nothing_before():
    port = free_port()
    forwarder, said = watching(FakeRun("127.0.0.1"), port)
    time.sleep(0.5)
    assert said == []  # the app is still starting: quiet
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(8)
    try:
        deadline = time.time() + 10
        while not said and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert said == [f"port {port} answers: http://127.0.0.1:{port}"]
    finally:
        forwarder.stop()
        server.close()


def test_the_run_ending_first_is_said_once():
    port = free_port()
    run = FakeRun("127.0.0.1")
    forwarder, said = watching(run, port)
    threading.Timer(0.3, lambda: setattr(run, "finished", True)).start()
    time.sleep(1.0)
    forwarder.stop()
    assert said == [f"the run ended before port {port} answered"]
