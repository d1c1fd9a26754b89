"""Page fetcher for web search results: download a page safely and extract its main text.

Why: web text search returns URLs and short snippets; the summariser reads the pages themselves
(MMSearch-R1's url → page-text layer). Fetching URLs that come from the web on behalf of a model is
a server-side request forgery risk, so :func:`fetch_page` refuses:

* schemes other than http/https (``file://``, ``gopher://``, ...);
* hosts that resolve to ANY private, loopback, link-local, multicast, reserved, shared or
  unspecified address (every resolved IP is checked, IPv4-mapped IPv6 unwrapped); the connection
  then goes to the checked IP (Host header and TLS SNI keep the name), so a DNS answer cannot
  change between check and connect;
* redirects are followed by hand (at most ``max_redirects``), re-checking every hop;
* non-HTML content types, and bodies over ``max_bytes`` (streamed; reading stops at the limit).

``allow_private=True`` lets LOOPBACK addresses through and nothing else (10.x, 169.254.x stay
refused): it exists only so tests can serve pages from 127.0.0.1. Never set it in a deployment.

Main text comes from ``trafilatura``. Failures a retry can help with (connection failures, 429,
502, 503) are retried under the project's one policy (components/common/retry.py), then raised as
:class:`FetchError`, like read timeouts and other errors; refusals raise :class:`FetchRefused`.

    page = await fetch_page("https://example.org/article")   # Page(url, title, text)
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx
import trafilatura

from components.common import retry

log = logging.getLogger(__name__)

HTML_TYPES = ("text/html", "application/xhtml+xml")
USER_AGENT = "deepmmsearch-fetcher/1.0 (+https://github.com/deepmmsearch)"


class FetchRefused(ValueError):
    """The URL or the answer is refused (SSRF guard, scheme, content type, size)."""


class FetchError(RuntimeError):
    """The page could not be fetched (timeout, HTTP error, connection error; retried per the policy)."""


@dataclass(frozen=True)
class Page:
    url: str
    title: str
    text: str


def _ip_refused(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if allow_private and ip.is_loopback:
        return False
    return (not ip.is_global or ip.is_private or ip.is_loopback or ip.is_link_local
            or ip.is_multicast or ip.is_reserved or ip.is_unspecified)


async def resolve_checked(url: str, allow_private: bool = False) -> tuple[str, int, str]:
    """``(host, port, ip)`` for ``url`` after checking the scheme and EVERY address the host resolves to."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchRefused(f"refused {url!r}: only http and https URLs are fetched")
    host = parts.hostname
    if not host:
        raise FetchRefused(f"refused {url!r}: no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise FetchRefused(f"refused {url!r}: bad port") from None
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve {host!r}: {exc}") from None
    ips = sorted({info[4][0] for info in infos})
    for raw in ips:
        ip = ipaddress.ip_address(raw.split("%", 1)[0])
        if _ip_refused(ip, allow_private):
            raise FetchRefused(f"refused {url!r}: {host} resolves to non-public address {ip}")
    return host, port, ips[0]


def _pinned_request(client: httpx.AsyncClient, url: str, host: str, ip: str) -> httpx.Request:
    """A GET to the checked IP, with the real name in the Host header and the TLS SNI."""
    parts = urlsplit(url)
    netloc_ip = f"[{ip}]" if ":" in ip else ip
    if parts.port:
        netloc_ip += f":{parts.port}"
    target = parts._replace(netloc=netloc_ip).geturl()
    host_header = host if not parts.port else f"{host}:{parts.port}"
    return client.build_request("GET", target, headers={"Host": host_header, "User-Agent": USER_AGENT,
                                                        "Accept": "text/html,application/xhtml+xml"},
                                extensions={"sni_hostname": host})


async def _read_limited(resp: httpx.Response, url: str, max_bytes: int) -> bytes:
    declared = resp.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise FetchRefused(f"refused {url!r}: body of {declared} bytes exceeds the {max_bytes}-byte limit")
    chunks, size = [], 0
    async for chunk in resp.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise FetchRefused(f"refused {url!r}: body exceeds the {max_bytes}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def _fetch_once(client: httpx.AsyncClient, url: str, *, max_bytes: int, max_redirects: int,
                      allow_private: bool) -> tuple[str, bytes, str | None]:
    """Follow redirects by hand, checking every hop; return (final URL, body, charset)."""
    for _ in range(max_redirects + 1):
        host, _port, ip = await resolve_checked(url, allow_private)
        resp = await client.send(_pinned_request(client, url, host, ip), stream=True)
        try:
            if resp.is_redirect:
                location = resp.headers.get("location")
                if not location:
                    raise FetchError(f"{url!r}: redirect without a Location header")
                url = urljoin(url, location)
                continue
            if retry.retryable_status(resp.status_code):
                raise retry.Retryable(FetchError(f"{url!r}: HTTP {resp.status_code}"),
                                      retry_after=retry.retry_after_s(resp.headers))
            if resp.status_code >= 400:
                raise FetchError(f"{url!r}: HTTP {resp.status_code}")
            ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype not in HTML_TYPES:
                raise FetchRefused(f"refused {url!r}: content type {ctype or 'missing'!r} is not HTML")
            return url, await _read_limited(resp, url, max_bytes), resp.charset_encoding
        finally:
            await resp.aclose()
    raise FetchRefused(f"refused: more than {max_redirects} redirects")


async def fetch_page(url: str, *, max_bytes: int = 2_000_000, timeout_s: float = 15.0,
                     max_redirects: int = 5, max_retries: int = 2, backoff_s: float = 0.5,
                     allow_private: bool = False, client: httpx.AsyncClient | None = None) -> Page:
    """Fetch ``url`` under the SSRF guard and return its main text (see the module docstring)."""
    own = client is None
    client = client or httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False)
    tries = max_retries + 1

    async def once() -> tuple[str, bytes, str | None]:
        try:
            return await _fetch_once(client, url, max_bytes=max_bytes, max_redirects=max_redirects,
                                     allow_private=allow_private)
        except retry.Retryable as exc:
            raise retry.Retryable(FetchError(f"{exc.error} (after {tries} attempts)"), exc.retry_after) from None
        except httpx.TransportError as exc:
            if retry.is_connect_error(exc):
                raise retry.Retryable(FetchError(
                    f"{url!r}: connection failed ({type(exc).__name__}) (after {tries} attempts)")) from exc
            why = f"timed out after {timeout_s}s" if isinstance(exc, httpx.TimeoutException) else \
                f"connection broke ({type(exc).__name__})"
            raise FetchError(f"{url!r}: {why} (not retried)") from None

    try:
        final, body, charset = await retry.attempts(once, name="page fetch", retries=max_retries,
                                                    wait_initial=backoff_s)
    finally:
        if own:
            await client.aclose()
    html = body.decode(charset or "utf-8", errors="replace")
    return await asyncio.to_thread(_extract, final, html)


def _extract(url: str, html: str) -> Page:
    text = trafilatura.extract(html, url=url, include_comments=False, include_tables=True) or ""
    meta = trafilatura.extract_metadata(html, default_url=url)
    title = (meta.title if meta is not None and meta.title else "") or ""
    return Page(url=url, title=title, text=text)
