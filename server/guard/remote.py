"""Remote media policy: which http(s) URLs may be fetched, and fetching them here, bounded.

The guard downloads allowed URLs itself and hands vLLM a data URL, so vLLM never opens a
connection on a client's behalf. Every hop (the first URL and each redirect) must name an
allow-listed host whose addresses are all public; the whole fetch is bounded in time and size.
Residual risk (documented): DNS may answer differently between our check and httpx's connect;
the allow-list of trusted hosts is the primary control.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urljoin, urlsplit

import httpx

from server.guard.errors import GuardError

Resolver = Callable[[str, int], Awaitable[list[str]]]
MAX_REDIRECTS = 3


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def host_allowed(host: str, allowed: list[str]) -> bool:
    """Exact host, or `*.example.org` for its subdomains."""
    host = host.lower().rstrip(".")
    for pattern in allowed:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class MediaFetcher:
    def __init__(
        self,
        allowed_hosts: list[str],
        timeout_s: float,
        max_bytes: int,
        resolver: Resolver = system_resolver,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.allowed_hosts = allowed_hosts
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.resolver = resolver
        self.transport = transport  # tests inject a mock transport

    async def check_url(self, url: str, where: str) -> None:
        """Policy only (scheme, allow-list, public addresses); raises GuardError(400)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise GuardError(
                400, f"{where}: only data: URLs and http(s) URLs are accepted", "media_url_forbidden", where
            )
        host = parts.hostname
        if not host_allowed(host, self.allowed_hosts):
            raise GuardError(
                400,
                f"{where}: media host {host!r} is not on the server's allow-list "
                "(send the media inline as a base64 data URL)",
                "media_url_forbidden",
                where,
            )
        try:
            addresses = await self.resolver(host, parts.port or (443 if parts.scheme == "https" else 80))
        except OSError as exc:
            raise GuardError(
                400, f"{where}: cannot resolve media host {host!r} ({exc})", "media_fetch_failed", where
            ) from None
        if not addresses or not all(is_public(a) for a in addresses):
            raise GuardError(
                400,
                f"{where}: media host {host!r} resolves to a non-public address",
                "media_url_forbidden",
                where,
            )

    async def fetch(self, url: str, where: str) -> bytes:
        try:
            return await asyncio.wait_for(self._fetch(url, where), timeout=self.timeout_s)
        except TimeoutError:
            raise GuardError(
                504,
                f"{where}: fetching the media URL took longer than {self.timeout_s:g} s",
                "media_fetch_timeout",
                where,
            ) from None

    async def _fetch(self, url: str, where: str) -> bytes:
        async with httpx.AsyncClient(
            follow_redirects=False, timeout=self.timeout_s, transport=self.transport, trust_env=False
        ) as client:
            for _ in range(MAX_REDIRECTS + 1):
                await self.check_url(url, where)
                try:
                    async with client.stream("GET", url) as reply:
                        if reply.is_redirect and "location" in reply.headers:
                            url = urljoin(url, reply.headers["location"])
                            continue
                        if reply.status_code >= 400:
                            raise GuardError(
                                400,
                                f"{where}: media URL answered HTTP {reply.status_code}",
                                "media_fetch_failed",
                                where,
                            )
                        return await self._read_bounded(reply, where)
                except httpx.TimeoutException:
                    raise GuardError(
                        504,
                        f"{where}: media host did not answer within {self.timeout_s:g} s",
                        "media_fetch_timeout",
                        where,
                    ) from None
                except httpx.HTTPError as exc:
                    raise GuardError(
                        400,
                        f"{where}: cannot fetch media URL ({type(exc).__name__})",
                        "media_fetch_failed",
                        where,
                    ) from None
            raise GuardError(
                400, f"{where}: more than {MAX_REDIRECTS} redirects", "media_fetch_failed", where
            )

    async def _read_bounded(self, reply: httpx.Response, where: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in reply.aiter_bytes():
            size += len(chunk)
            if size > self.max_bytes:
                raise GuardError(
                    400, f"{where}: remote media exceeds {self.max_bytes} bytes", "media_too_large", where
                )
            chunks.append(chunk)
        return b"".join(chunks)
