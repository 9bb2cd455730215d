"""Fetches a client-supplied http(s) image URL without letting the client reach internal hosts.

Server-side request forgery is the risk: a chat request can name any URL, and the gateway sits
inside someone's network. So every hop is vetted before a byte is sent:

- only http and https, no credentials in the URL;
- the host is resolved once and refused if ANY address is private, loopback, link-local,
  multicast, reserved, unspecified, not globally routable or a cloud metadata address
  (IPv4 embedded in IPv6 - mapped, 6to4, NAT64 - is unwrapped and checked too);
- the request goes to the vetted IP itself (Host header and TLS SNI keep the name), so a second
  DNS answer cannot swap in an internal address (DNS rebinding);
- redirects are followed by hand, each hop vetted the same way, at most `max_redirects`;
- the whole fetch has one deadline, the body is capped (Content-Length and while streaming) and
  the content type must be image/*.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

from guard_engine.errors import ImageError

Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_METADATA: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def blocked_reason(ip: IPAddress) -> str | None:
    """Why `ip` must not be contacted, or None when it is a public unicast address."""
    if ip in _METADATA:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            inner = blocked_reason(embedded)
            if inner is not None:
                return inner
    checks = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        # Catches the rest of the special-purpose ranges, e.g. 100.64.0.0/10 (carrier NAT).
        (not ip.is_global, "not a public address"),
    )
    for hit, reason in checks:
        if hit:
            return reason
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the OS resolver returns for `host`, in its order, without duplicates."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _prefix(param: str) -> str:
    return f"{param}: " if param else ""


class ImageFetcher:
    """Downloads images from public http(s) URLs for the guard; see the module docstring."""

    def __init__(
        self,
        *,
        max_bytes: int = 10 * 1024 * 1024,
        timeout_s: float = 5.0,
        max_redirects: int = 3,
        resolver: Resolver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        allow_private: bool = False,
    ) -> None:
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self._max_redirects = max_redirects
        self._resolver: Resolver = resolver or system_resolver
        self._allow_private = allow_private
        if transport is None:
            # No idle keep-alive: connections are keyed by IP, and a TLS session verified for
            # one name must not be reused for another name served from the same IP.
            transport = httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_keepalive_connections=0), retries=0
            )
        self._client = httpx.AsyncClient(
            transport=transport,
            # trust_env=False: an HTTP(S)_PROXY from the environment would do its own DNS
            # lookup and defeat the address pinning.
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(timeout_s),
            # Cookies set by one fetched site must never ride along to the next fetch.
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, url: str, *, param: str) -> bytes:
        """The body of the image at `url`, or ImageError naming `param` and the reason."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._follow(url, param)
        except (TimeoutError, httpx.TimeoutException):
            raise ImageError(
                f"{_prefix(param)}image URL timed out after {self._timeout_s:g}s", param=param
            ) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise ImageError(
                f"{_prefix(param)}image URL could not be fetched ({type(exc).__name__})",
                param=param,
            ) from None

    async def _follow(self, url: str, param: str) -> bytes:
        try:
            current = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ImageError(f"{_prefix(param)}invalid image URL ({exc})", param=param) from None
        for _hop in range(self._max_redirects + 1):
            body, location = await self._hop(current, param)
            if body is not None:
                return body
            assert location is not None
            current = location
        raise ImageError(
            f"{_prefix(param)}image URL redirected more than {self._max_redirects} times",
            param=param,
        )

    async def _vetted_addresses(self, url: httpx.URL, param: str) -> list[str]:
        if url.scheme not in _DEFAULT_PORTS:
            raise ImageError(
                f"{_prefix(param)}image URL scheme '{url.scheme}' is not allowed (http, https)",
                param=param,
            )
        if url.userinfo:
            raise ImageError(
                f"{_prefix(param)}image URLs with credentials are not allowed", param=param
            )
        host = url.raw_host.decode("ascii")
        if not host:
            raise ImageError(f"{_prefix(param)}image URL has no host", param=param)
        port = url.port or _DEFAULT_PORTS[url.scheme]
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            answers = [host]
        else:
            try:
                answers = await self._resolver(host, port)
            except OSError:
                answers = []
            if not answers:
                raise ImageError(
                    f"{_prefix(param)}image URL host '{host}' could not be resolved", param=param
                )
        for answer in answers:
            try:
                ip = ipaddress.ip_address(answer)
            except ValueError:
                raise ImageError(
                    f"{_prefix(param)}image URL host '{host}' resolved to an invalid address",
                    param=param,
                ) from None
            reason = None if self._allow_private else blocked_reason(ip)
            if reason is not None:
                raise ImageError(
                    f"{_prefix(param)}image URL host '{host}' resolves to {reason}; refused",
                    param=param,
                )
        return answers

    async def _hop(self, url: httpx.URL, param: str) -> tuple[bytes | None, httpx.URL | None]:
        """One request: the body, or the next URL when the answer is a redirect."""
        addresses = await self._vetted_addresses(url, param)
        host = url.raw_host.decode("ascii")
        headers = {"Host": url.netloc.decode("ascii"), "Accept": "image/*"}
        # identity: a compressed body could expand far past max_bytes inside one chunk.
        headers["Accept-Encoding"] = "identity"
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        last_error: httpx.ConnectError | None = None
        for address in addresses:
            request = self._client.build_request(
                "GET", url.copy_with(host=address), headers=headers, extensions=extensions
            )
            try:
                response = await self._client.send(request, stream=True)
            except httpx.ConnectError as exc:
                last_error = exc  # try the next vetted address, all share the deadline
                continue
            try:
                return await self._read(response, url, param)
            finally:
                await response.aclose()
        assert last_error is not None
        raise last_error

    async def _read(
        self, response: httpx.Response, url: httpx.URL, param: str
    ) -> tuple[bytes | None, httpx.URL | None]:
        p = _prefix(param)
        if response.status_code in _REDIRECTS:
            location = response.headers.get("location")
            if not location:
                raise ImageError(f"{p}image URL redirect has no Location", param=param)
            try:
                # Joined against the URL as the client named it, not the pinned IP.
                return None, url.join(location)
            except httpx.InvalidURL as exc:
                raise ImageError(f"{p}invalid redirect target ({exc})", param=param) from None
        if response.status_code != 200:
            raise ImageError(f"{p}image URL answered HTTP {response.status_code}", param=param)
        ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if not ctype.startswith("image/"):
            raise ImageError(
                f"{p}image URL content type is '{ctype or 'missing'}', not image/*", param=param
            )
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ImageError(f"{p}image URL sent a {encoding}-encoded body", param=param)
        too_big = f"{p}image at URL is larger than {self._max_bytes} bytes"
        declared = response.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self._max_bytes:
            raise ImageError(too_big, param=param)
        chunks: list[bytes] = []
        size = 0
        # Content-Encoding is known to be identity here, so aiter_bytes yields the raw body.
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self._max_bytes:
                raise ImageError(too_big, param=param)
            chunks.append(chunk)
        return b"".join(chunks), None
