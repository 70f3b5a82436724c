"""What the service refuses from web browsers and where it listens (service/exposure.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dstack_ray.service.exposure import _listening, allowed_host_names, bind_like_dashboard, browser_guard, host_allowed, is_browser_request

BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)", "Origin": "http://evil.example"}


def _requests(*calls):
    """Each (method, path, headers, data) against an app behind the guard that answers 200:
    the statuses."""

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def go():
        app = web.Application(middlewares=[browser_guard(allowed_host_names(""))])
        app.router.add_route("*", "/{tail:.*}", ok)
        async with TestClient(TestServer(app)) as client:
            statuses = []
            for method, path, headers, data in calls:
                response = await client.request(method, path, headers=headers, data=data)
                statuses.append(response.status)
            return statuses

    return asyncio.run(go())


def test_a_browser_page_cannot_submit_a_run_the_way_the_review_did():
    # A page's simple request: text/plain needs no preflight, so a browser sends it cross-site.
    text_post = ("POST", "/api/runs", {**BROWSER, "Content-Type": "text/plain"}, '{"spec": {}}')
    json_post = ("POST", "/api/runs", {**BROWSER, "Content-Type": "application/json"}, "{}")
    delete = ("DELETE", "/api/runs/x", BROWSER, None)
    relay = ("GET", "/api/runs/x/ports/22", {**BROWSER, "Connection": "Upgrade", "Upgrade": "websocket"}, None)
    assert _requests(text_post, json_post, delete, relay) == [405, 405, 405, 405]


def test_browsers_may_read_by_address_but_not_through_a_rebound_name():
    by_ip = ("GET", "/api/runs", {"User-Agent": "Mozilla/5.0"}, None)  # TestClient names 127.0.0.1:port
    rebound = ("GET", "/api/runs", {"User-Agent": "Mozilla/5.0", "Host": "attacker.example:8270"}, None)
    fetch_rebound = ("GET", "/api/runs/x", {"Sec-Fetch-Mode": "cors", "Host": "attacker.example"}, None)
    localhost = ("GET", "/api/runs", {"User-Agent": "Mozilla/5.0", "Host": "localhost:8270"}, None)
    assert _requests(by_ip, rebound, fetch_rebound, localhost) == [200, 403, 403, 200]


def test_other_clients_are_not_affected_but_their_writes_must_be_json():
    cli_post = ("POST", "/api/runs", {"Content-Type": "application/json", "Host": "raycluster-head-svc:8270"}, "{}")
    curl_text = ("POST", "/api/runs", {"Content-Type": "text/plain", "User-Agent": "curl/8.5"}, "{}")
    form = ("POST", "/api/runs/x/stop", {"Content-Type": "application/x-www-form-urlencoded"}, "a=1")
    bodiless = ("POST", "/api/runs/x/stop", {}, None)
    assert _requests(cli_post, curl_text, form, bodiless) == [200, 415, 415, 200]


def test_rays_browser_heuristic():
    assert is_browser_request({"User-Agent": "Mozilla/5.0"})
    assert is_browser_request({"User-Agent": "x", "Sec-Fetch-Site": "cross-site"})
    assert is_browser_request({"Referer": "http://a/"})
    assert not is_browser_request({"User-Agent": "Python-urllib/3.11"})
    assert not is_browser_request({})


@pytest.mark.parametrize(
    "host, allowed",
    [
        ("127.0.0.1:8270", True), ("10.1.2.3", True), ("[::1]:8270", True), ("[fe80::1]", True),
        ("localhost:8270", True), ("ui.localhost", True), ("head-node:8270", True), ("extra.example", True),
        ("attacker.example:8270", False), ("127.0.0.1.nip.io", False), ("", False), (None, False),
    ],
)
def test_host_names_a_browser_may_use(host, allowed):
    assert host_allowed(host, {"head-node", "extra.example"}) is allowed


def test_more_names_come_from_the_setting(monkeypatch):
    monkeypatch.setenv("DSTACK_RAY_SERVICE_ALLOWED_HOSTS", "Ray.Example.com, other")
    names = allowed_host_names()
    assert {"ray.example.com", "other"} <= names and host_allowed("ray.example.com:8270", names)
    assert host_allowed("anything", allowed_host_names("*"))


TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2049 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0502000A:1A0B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
   3: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
"""
TCP6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1B58 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0 100 0 0 10 0
   1: 00000000000000000000000001000000:1E61 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6 1 0 100 0 0 10 0
"""


@pytest.fixture
def tables(tmp_path: Path):
    (tmp_path / "tcp").write_text(TCP)
    (tmp_path / "tcp6").write_text(TCP6)
    return [tmp_path / "tcp", tmp_path / "tcp6"]


def test_the_hosts_socket_tables_are_read(tables):
    assert _listening(0x2049, tables) == ["127.0.0.1"]
    assert _listening(0x1F90, tables) == ["0.0.0.0"]  # the connected socket on 8080 is not listening
    assert _listening(0x1A0B, tables) == ["10.0.2.5"]
    assert _listening(0x1B58, tables) == ["::"] and _listening(0x1E61, tables) == ["::1"]


def test_the_service_listens_where_the_dashboard_does(tables):
    # Without the socket tables: what the dashboard published (its loopback address, or the node's IP)
    assert bind_like_dashboard("127.0.0.1:8265", []) == "127.0.0.1"
    assert bind_like_dashboard("10.0.2.5:8265", []) == "0.0.0.0"
    assert bind_like_dashboard("10.0.2.5:8201", tables) == "0.0.0.0"  # not in the tables: as without them
    # With them: where it listens (0x2049 = 8265: loopback only)
    assert bind_like_dashboard("127.0.0.1:8265", tables) == "127.0.0.1"
    assert bind_like_dashboard("10.0.2.5:8265", tables) == "127.0.0.1"
    assert bind_like_dashboard("10.0.2.5:8080", tables) == "0.0.0.0"
    assert bind_like_dashboard("10.0.2.5:6667", tables) == "10.0.2.5"  # 0x1A0B: that address only
    assert bind_like_dashboard("10.0.2.5:7000", tables) == "0.0.0.0"  # 0x1B58: [::]
    assert bind_like_dashboard("[::1]:7777", tables) == "127.0.0.1"  # 0x1E61: [::1]
    assert bind_like_dashboard(None) == "127.0.0.1"
