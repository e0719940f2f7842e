"""Where load may go (R-SAFE): the profile's allowlist, enforced before a single request.

An allowlist entry is an IP address (`10.0.0.5`, `::1`), a CIDR range (`127.0.0.0/8`) or a host name
(`localhost`, `staging.internal`). A target is allowed when EVERY address its host resolves to lies in
an allowed range or is an address of an allowed name: a name that resolves partly outside the list
(round-robin DNS, a split horizon) is refused, because the load would reach the outside address too.

Three layers, so that no part of the campaign can be pointed elsewhere:
- `check_allowlist(url, allowlist)` at the start of a campaign (the CLI maps `AllowlistError` to exit 2);
- `AllowlistTransport` / `guarded_client(...)` for every httpx call the campaign makes to the target
  (health, seeding, metric scrapes, cleanup): refused in the transport, before a connection is opened,
  and again for every redirect hop;
- `k6_guard_args(allowlist)` / `k6_guard_env(allowlist)`: k6's own `--blacklist-ip` with the complement
  of the allowed ranges (k6 checks the dialled address after resolution, so a script or a DNS answer
  cannot reach a disallowed address), and `--block-hostnames *` when the allowlist names no host.
  Command-line flags take precedence over script options in k6, so a scenario script cannot lift them.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from soundcheck.profile import ProfileError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_ALLOWLIST = ("127.0.0.0/8", "::1", "localhost")

#: How long a resolution is reused by the httpx guard (resolving per request would cost a lookup each).
RESOLVE_TTL_S = 30.0


class AllowlistError(ProfileError):
    """A target outside the allowlist; the message is one sentence naming the host.

    A ProfileError, so every caller that maps configuration errors to exit 2 maps this one too.
    """


@dataclass(frozen=True)
class Allowlist:
    networks: tuple[IPNetwork, ...]
    names: tuple[str, ...]

    @classmethod
    def parse(cls, entries: Iterable[str] | Allowlist | None) -> Allowlist:
        if isinstance(entries, Allowlist):
            return entries
        nets: list[IPNetwork] = []
        names: list[str] = []
        for raw in DEFAULT_ALLOWLIST if entries is None else entries:
            e = str(raw).strip()
            if not e:
                continue
            try:
                nets.append(_normalise_net(ipaddress.ip_network(e.strip("[]"), strict=False)))
                continue
            except ValueError:
                pass
            if "/" in e or ":" in e or " " in e:
                raise AllowlistError(f"allowlist entry {e!r} is neither an address, a CIDR range nor a host name.")
            names.append(e.lower().rstrip("."))
        return cls(tuple(nets), tuple(names))

    def allows_address(self, addr: IPAddress, name_addresses: Sequence[IPAddress] = ()) -> bool:
        addr = _normalise_addr(addr)
        return any(addr in n for n in self.networks) or addr in name_addresses


def _normalise_addr(addr: IPAddress) -> IPAddress:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _normalise_net(net: IPNetwork) -> IPNetwork:
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None and net.prefixlen >= 96:
        return ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
    return net


def host_of(url: str) -> str:
    """The host of a URL (or of a bare `host[:port]`), lower-case, without brackets."""
    parts = urlsplit(url if "//" in url else f"//{url}")
    host = parts.hostname
    if not host:
        raise AllowlistError(f"target {url!r} has no host to check against the allowlist.")
    return host.lower().rstrip(".")


def resolve(host: str) -> list[IPAddress]:
    """Every address `host` resolves to (an address literal resolves to itself)."""
    try:
        return [_normalise_addr(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as e:
        raise AllowlistError(
            f"host {host!r} cannot be resolved ({e}), so it cannot be checked against the "
            "allowlist; refusing to send load to it."
        ) from None
    out: list[IPAddress] = []
    for info in infos:
        a = _normalise_addr(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
        if a not in out:
            out.append(a)
    return out


def _named_addresses(al: Allowlist, resolver: Callable[[str], list[IPAddress]]) -> list[IPAddress]:
    out: list[IPAddress] = []
    for name in al.names:
        try:
            out.extend(resolver(name))
        except AllowlistError:
            continue  # an allowed name that does not resolve allows nothing
    return out


def check_host(
    host: str, allowlist: Iterable[str] | Allowlist | None, resolver: Callable[[str], list[IPAddress]] = resolve
) -> list[IPAddress]:
    """Refuse `host` unless every address it resolves to is allowed; returns those addresses."""
    al = Allowlist.parse(allowlist)
    host = host.lower().rstrip(".").strip("[]")
    addrs = resolver(host)
    if not addrs:
        raise AllowlistError(f"host {host!r} resolves to no address; refusing to send load to it.")
    named = _named_addresses(al, resolver) if al.names else []
    outside = [a for a in addrs if not al.allows_address(a, named)]
    if outside:
        shown = ", ".join(str(a) for a in outside[:3])
        what = "is" if str(outside[0]) == host else f"resolves to {shown}, which is"
        raise AllowlistError(
            f"target host {host!r} {what} not on the allowlist "
            f"({', '.join(_entries(al))}); refusing to send a single request to it."
        )
    return addrs


def _entries(al: Allowlist) -> list[str]:
    return [str(n) for n in al.networks] + list(al.names)


def check_allowlist(url: str, allowlist: Iterable[str] | Allowlist | None = None) -> list[IPAddress]:
    """Refuse `url` unless its host is on the allowlist (None: loopback only). Raises AllowlistError."""
    return check_host(host_of(url), allowlist)


def check_profile_urls(profile: Any, target_url: str | None = None) -> list[str]:
    """Check every URL of the profile that the campaign sends traffic to: the target, its metrics scrape
    URL, the Kafka brokers it reads consumer lag from, and the host of the target's database (the rollback
    deletes test data there). Returns the URLs checked. SQLite and unset URLs are skipped (nothing leaves
    the machine)."""
    allow = profile.target.allowlist
    urls = [u for u in (target_url or profile.target.base_url, profile.metrics.scrape_url) if u]
    for u in urls:
        check_allowlist(u, allow)
    kafka = profile.metrics.kafka
    if kafka.bootstrap_servers and kafka.enabled and "${" not in kafka.bootstrap_servers:  # else: once resolved
        for server in kafka.bootstrap_servers.split(","):
            check_host(server.strip().rsplit(":", 1)[0], allow)
            urls.append(server.strip())
    db = profile.target.database_url
    if db and not db.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        h = make_url(db).host
        if h:
            check_host(h, allow)
            urls.append(db.split("@")[-1])
    return urls


# ---------------------------------------------------------------------------------------------- httpx


class _Cache:
    """Resolution results reused for RESOLVE_TTL_S, so the guard costs one lookup per host and minute."""

    def __init__(self, allowlist: Allowlist, ttl_s: float = RESOLVE_TTL_S) -> None:
        self.allowlist = allowlist
        self.ttl_s = ttl_s
        self._ok: dict[str, float] = {}
        self._lock = threading.Lock()

    def check(self, url: httpx.URL) -> None:
        host = url.host
        now = time.monotonic()
        with self._lock:
            if self._ok.get(host, 0.0) > now:
                return
        check_host(host, self.allowlist)
        with self._lock:
            self._ok[host] = now + self.ttl_s


class AllowlistTransport(httpx.BaseTransport):
    """Wraps a transport; a request to a host off the allowlist raises AllowlistError before connecting."""

    def __init__(
        self, allowlist: Iterable[str] | Allowlist | None = None, inner: httpx.BaseTransport | None = None
    ) -> None:
        self._cache = _Cache(Allowlist.parse(allowlist))
        self._inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._cache.check(request.url)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


class AsyncAllowlistTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of AllowlistTransport."""

    def __init__(
        self, allowlist: Iterable[str] | Allowlist | None = None, inner: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._cache = _Cache(Allowlist.parse(allowlist))
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._cache.check(request.url)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def guard_hooks(allowlist: Iterable[str] | Allowlist | None = None) -> dict[str, list[Callable[..., Any]]]:
    """httpx `event_hooks` for a sync Client that already has its own transport."""
    cache = _Cache(Allowlist.parse(allowlist))

    def _check(request: httpx.Request) -> None:
        cache.check(request.url)

    return {"request": [_check]}


def async_guard_hooks(allowlist: Iterable[str] | Allowlist | None = None) -> dict[str, list[Callable[..., Any]]]:
    """httpx `event_hooks` for an AsyncClient."""
    cache = _Cache(Allowlist.parse(allowlist))

    async def _check(request: httpx.Request) -> None:
        cache.check(request.url)

    return {"request": [_check]}


def guarded_client(allowlist: Iterable[str] | Allowlist | None = None, **kwargs: Any) -> httpx.Client:
    """An httpx.Client that can only reach allowlisted hosts (kwargs go to httpx.Client)."""
    inner = kwargs.pop("transport", None)
    return httpx.Client(transport=AllowlistTransport(allowlist, inner), **kwargs)


def guarded_async_client(allowlist: Iterable[str] | Allowlist | None = None, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx.AsyncClient that can only reach allowlisted hosts."""
    inner = kwargs.pop("transport", None)
    return httpx.AsyncClient(transport=AsyncAllowlistTransport(allowlist, inner), **kwargs)


# ------------------------------------------------------------------------------------------------- k6


def blocked_ranges(
    allowlist: Iterable[str] | Allowlist | None = None, resolver: Callable[[str], list[IPAddress]] = resolve
) -> list[str]:
    """The complement of the allowed addresses, as CIDR ranges (IPv4 and IPv6), for k6 --blacklist-ip.

    Allowed names count with the addresses they resolve to now; if their DNS changes during the run,
    k6 refuses the new address (the safe side).
    """
    al = Allowlist.parse(allowlist)
    allowed: list[IPNetwork] = list(al.networks)
    for a in _named_addresses(al, resolver):
        allowed.append(ipaddress.ip_network(a))
    out: list[str] = []
    for universe in (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")):
        mine = list(ipaddress.collapse_addresses(n for n in allowed if n.version == universe.version))
        rest: list[IPNetwork] = [universe]
        for hole in mine:
            nxt: list[IPNetwork] = []
            for r in rest:
                if hole.subnet_of(r):  # type: ignore[arg-type]
                    nxt.extend(r.address_exclude(hole))  # type: ignore[arg-type]
                elif not r.subnet_of(hole):  # type: ignore[arg-type]
                    nxt.append(r)
            rest = nxt
        out.extend(str(n) for n in ipaddress.collapse_addresses(rest))  # type: ignore[arg-type]
    return out


def k6_guard_args(allowlist: Iterable[str] | Allowlist | None = None) -> list[str]:
    """k6 command-line flags that make k6 itself refuse every address off the allowlist.

    `--blacklist-ip` carries the complement of the allowed ranges; when the allowlist names no host,
    `--block-hostnames *` also refuses every name lookup (k6 cannot express "all names but these").
    """
    al = Allowlist.parse(allowlist)
    args: list[str] = []
    ranges = blocked_ranges(al)
    if ranges:
        args += ["--blacklist-ip", ",".join(ranges)]
    if not al.names:
        args += ["--block-hostnames", "*"]
    return args


def k6_guard_env(allowlist: Iterable[str] | Allowlist | None = None) -> dict[str, str]:
    """The same guard as environment variables (K6_BLACKLIST_IPS, K6_BLOCK_HOSTNAMES)."""
    al = Allowlist.parse(allowlist)
    env: dict[str, str] = {}
    ranges = blocked_ranges(al)
    if ranges:
        env["K6_BLACKLIST_IPS"] = ",".join(ranges)
    if not al.names:
        env["K6_BLOCK_HOSTNAMES"] = "*"
    return env
