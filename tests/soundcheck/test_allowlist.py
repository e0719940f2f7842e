"""The allowlist refuses before a single request: at the campaign start, in httpx, and inside k6."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import threading

import httpx
import pytest

from soundcheck.allowlist import (
    AllowlistError,
    AsyncAllowlistTransport,
    blocked_ranges,
    check_allowlist,
    check_host,
    check_profile_urls,
    guard_hooks,
    guarded_client,
    k6_guard_args,
    k6_guard_env,
)
from soundcheck.paths import venv_bin
from soundcheck.profile import ProfileError, parse_profile


def fake_resolver(table):
    def _resolve(host):
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        if host not in table:
            raise AllowlistError(f"host {host!r} cannot be resolved")
        return [ipaddress.ip_address(a) for a in table[host]]

    return _resolve


def test_loopback_is_allowed_by_default():
    assert check_allowlist("http://127.0.0.1:8080/api") == [ipaddress.ip_address("127.0.0.1")]
    assert check_allowlist("http://[::1]:8080/") == [ipaddress.ip_address("::1")]
    addrs = check_allowlist("http://localhost:1234")
    assert addrs and all(a.is_loopback for a in addrs)


@pytest.mark.parametrize(
    "url", ["http://10.0.0.5/", "https://8.8.8.8:443/x", "http://[2001:db8::1]/", "http://[::ffff:10.0.0.5]/"]
)
def test_outside_addresses_are_refused_with_one_sentence_naming_the_host(url):
    with pytest.raises(AllowlistError) as e:
        check_allowlist(url)
    msg = str(e.value)
    host = (
        url.split("//")[1].split("/")[0].rsplit(":", 1)[0].strip("[]")
        if "[" not in url
        else url.split("[")[1].split("]")[0]
    )
    assert repr(host) in msg or host in msg
    assert "\n" not in msg and msg.endswith(".")
    assert isinstance(e.value, ProfileError)  # the CLI maps it to exit 2


def test_cidr_and_address_entries():
    allow = ["10.1.0.0/16", "192.168.1.7"]
    check_allowlist("http://10.1.200.3:80", allow)
    check_allowlist("http://192.168.1.7", allow)
    with pytest.raises(AllowlistError, match="'192.168.1.8'"):
        check_allowlist("http://192.168.1.8", allow)
    with pytest.raises(AllowlistError):
        check_allowlist("http://127.0.0.1", allow)  # loopback is only the default, not implied


def test_every_resolved_address_must_be_allowed():
    res = fake_resolver(
        {"split.example": ["127.0.0.1", "93.184.216.34"], "lo.example": ["127.0.0.9"], "staging.internal": ["10.9.9.9"]}
    )
    check_host("lo.example", ["127.0.0.0/8"], resolver=res)
    with pytest.raises(AllowlistError, match=r"'split.example' resolves to 93\.184\.216\.34"):
        check_host("split.example", ["127.0.0.0/8"], resolver=res)
    # a name on the list allows the addresses it resolves to
    check_host("staging.internal", ["staging.internal"], resolver=res)
    with pytest.raises(AllowlistError, match="cannot be resolved"):
        check_host("nowhere.invalid", ["127.0.0.0/8"], resolver=res)


def test_bad_entry_is_a_clear_error():
    with pytest.raises(AllowlistError, match="neither an address"):
        check_allowlist("http://127.0.0.1", ["10.0.0.0/33"])


def test_profile_urls_are_all_checked():
    p = parse_profile(
        {
            "name": "x",
            "target": {"base_url": "http://127.0.0.1:9000", "database_url": "mysql+pymysql://u:p@10.0.0.8:3306/app"},
        }
    )
    with pytest.raises(AllowlistError, match="'10.0.0.8'"):
        check_profile_urls(p)
    p = parse_profile({"name": "x", "metrics": {"scrape_url": "http://10.0.0.9/metrics"}})
    with pytest.raises(AllowlistError, match="'10.0.0.9'"):
        check_profile_urls(p, "http://127.0.0.1:9000")
    p = parse_profile({"name": "x", "target": {"database_url": "sqlite:///x.db"}})
    assert check_profile_urls(p, "http://localhost:9000") == ["http://localhost:9000"]


class _Recorder(httpx.BaseTransport):
    def __init__(self):
        self.seen: list[str] = []

    def handle_request(self, request):
        self.seen.append(str(request.url))
        if request.url.path == "/redirect":
            return httpx.Response(302, headers={"location": "http://10.0.0.5/stolen"})
        return httpx.Response(200, text="ok")


def test_httpx_guard_refuses_before_the_transport_is_touched():
    rec = _Recorder()
    with guarded_client(["127.0.0.0/8"], transport=rec, follow_redirects=True) as c:
        assert c.get("http://127.0.0.1:9/ok").text == "ok"
        with pytest.raises(AllowlistError, match="'10.0.0.5'"):
            c.get("http://10.0.0.5/x")
        with pytest.raises(AllowlistError, match="'10.0.0.5'"):
            c.get("http://127.0.0.1:9/redirect")  # the redirect hop is refused too
    assert rec.seen == ["http://127.0.0.1:9/ok", "http://127.0.0.1:9/redirect"]


def test_event_hooks_variant():
    rec = _Recorder()
    with httpx.Client(transport=rec, event_hooks=guard_hooks(["127.0.0.1"])) as c, pytest.raises(AllowlistError):
        c.get("http://127.0.0.2:9/")
    assert rec.seen == []


def test_async_guard():
    import asyncio

    class Inner(httpx.AsyncBaseTransport):
        calls = 0

        async def handle_async_request(self, request):
            Inner.calls += 1
            return httpx.Response(204)

    async def go():
        async with httpx.AsyncClient(transport=AsyncAllowlistTransport(None, Inner())) as c:
            assert (await c.get("http://127.0.0.1/")).status_code == 204
            with pytest.raises(AllowlistError):
                await c.get("http://192.0.2.1/")

    asyncio.run(go())
    assert Inner.calls == 1


def test_blocked_ranges_are_the_exact_complement():
    ranges = [ipaddress.ip_network(r) for r in blocked_ranges(["127.0.0.0/8", "::1"])]
    v4 = [r for r in ranges if r.version == 4]
    assert sum(r.num_addresses for r in v4) == 2**32 - 2**24
    assert not any(ipaddress.ip_address("127.1.2.3") in r for r in ranges)
    assert any(ipaddress.ip_address("10.0.0.1") in r for r in ranges)
    assert not any(ipaddress.ip_address("::1") in r for r in ranges)
    assert any(ipaddress.ip_address("::2") in r for r in ranges)
    assert any(ipaddress.ip_address("::ffff:127.0.0.1") in r for r in ranges)  # mapped form is refused
    assert blocked_ranges(["0.0.0.0/0", "::/0"]) == []


def test_k6_args_and_env():
    args = k6_guard_args(["127.0.0.1"])
    assert args[0] == "--blacklist-ip" and "--block-hostnames" in args and args[-1] == "*"
    env = k6_guard_env(["127.0.0.0/8", "localhost"])
    assert "K6_BLOCK_HOSTNAMES" not in env  # a name is allowed: k6 cannot say "all names but these"
    assert "127.0.0.0/8" not in env["K6_BLACKLIST_IPS"]


class _CountingServer:
    """A loopback HTTP listener that counts the connections it accepts."""

    def __init__(self, host: str):
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            try:
                conn.settimeout(1)
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            finally:
                conn.close()

    def close(self):
        self._stop.set()
        self._t.join(2)
        self.sock.close()


@pytest.mark.skipif(venv_bin("k6") is None, reason="k6 binary not installed")
def test_k6_itself_refuses_an_address_off_the_allowlist(tmp_path):
    """Allowlist 127.0.0.1 only: k6 reaches it, and never opens a connection to 127.0.0.2 (both loopback)."""
    allowed, other = _CountingServer("127.0.0.1"), _CountingServer("127.0.0.2")
    try:
        script = tmp_path / "t.js"
        script.write_text(
            "import http from 'k6/http';\n"
            "export const options = { iterations: 1, vus: 1, blacklistIPs: [], blockHostnames: [] };\n"
            "export default function () {\n"
            f"  const a = http.get('http://127.0.0.1:{allowed.port}/', {{timeout: '2s'}});\n"
            f"  const b = http.get('http://127.0.0.2:{other.port}/', {{timeout: '2s'}});\n"
            f"  const c = http.get('http://localhost:{allowed.port}/', {{timeout: '2s'}});\n"
            "  console.log(JSON.stringify({a: a.status, b: b.status, be: b.error_code, c: c.status,"
            " ce: c.error_code}));\n"
            "}\n"
        )
        cmd = [
            venv_bin("k6"),
            "run",
            "--quiet",
            "--no-usage-report",
            "--log-format",
            "raw",
            *k6_guard_args(["127.0.0.1"]),
            str(script),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        line = next(x for x in (out.stderr + out.stdout).splitlines() if x.startswith("{"))
        got = json.loads(line)
        assert got["a"] == 200
        assert got["b"] == 0 and got["be"] == 1110  # k6: "ip is blacklisted"
        assert got["c"] == 0 and got["ce"] == 1111  # no names allowed: "hostname is blocked"
        assert allowed.accepted == 1 and other.accepted == 0
    finally:
        allowed.close()
        other.close()
