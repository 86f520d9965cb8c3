"""A reference image given by reference rather than uploaded: OpenAI's `input_reference` object.

    {"image_url": "data:image/png;base64,..."}   read here
    {"image_url": "https://..."}                 fetched under rest.fetch's size and time limits; refused when
                                                 the host resolves to a loopback, private, link-local, multicast
                                                 or reserved address (SSRF) unless rest.fetch.allow_hosts names it;
                                                 the connection goes to the address checked (no second lookup a
                                                 rebinding DNS could answer differently), redirects are not followed
    {"file_id": "file_..."}                      refused: Kino has no Files API (see `FILE_ID_REFUSAL`)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import http.client
import ipaddress
import socket
import ssl
import urllib.parse
from dataclasses import dataclass

from serving.async_view import in_thread
from serving.config import RestFetchConfig
from serving.errors import InvalidArgument

FIELD = "input_reference.image_url"
# Why not a /v1/files: OpenAI's file ids name uploads with their own lifecycle (purpose, expiry, listing,
# deletion, quotas); a store of them is a table, a migration and a reaper for a value this API already takes
# three other ways. Refused loudly rather than ignored, naming what to send instead.
FILE_ID_REFUSAL = ("input_reference.file_id is not supported: this server has no Files API; send the image "
                   "itself as input_reference (multipart upload) or as input_reference.image_url (a data: URL "
                   "or an https URL)")


@dataclass(frozen=True)
class ImageReference:
    image_url: str | None = None
    file_id: str | None = None


async def reference_image(ref: ImageReference, fetch: RestFetchConfig) -> bytes:
    """The image's bytes (checked as an image later, with the uploaded kind); InvalidArgument naming the field."""
    if ref.file_id is not None:
        raise InvalidArgument(FILE_ID_REFUSAL, field="input_reference.file_id")
    url = (ref.image_url or "").strip()
    if not url:
        raise InvalidArgument("input_reference is not allowed: it needs image_url (or an uploaded file)",
                              field="input_reference")
    scheme = url.split(":", 1)[0].lower()
    if scheme == "data":
        return data_url(url, fetch.max_bytes)
    if scheme not in ("http", "https"):
        raise InvalidArgument(f"{FIELD} is not allowed: a data: URL or an http(s) URL, not {scheme}:", field=FIELD)
    if not fetch.enabled:
        raise InvalidArgument(f"{FIELD} is not allowed: this server does not fetch URLs (rest.fetch.enabled); "
                              "send a data: URL or upload the file", field=FIELD)
    try:
        return await asyncio.wait_for(in_thread(fetch_url, url, fetch), fetch.timeout_seconds)
    except TimeoutError:
        raise InvalidArgument(f"{FIELD}: fetching it took longer than {fetch.timeout_seconds:g} s",
                              field=FIELD) from None


def data_url(url: str, max_bytes: int) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep:
        raise InvalidArgument(f"{FIELD} is not allowed: a data: URL is data:<type>;base64,<data>", field=FIELD)
    try:
        data = (base64.b64decode(payload, validate=False) if head.lower().endswith(";base64")
                else urllib.parse.unquote_to_bytes(payload))
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{FIELD} is not allowed: its base64 data does not decode", field=FIELD) from None
    if len(data) > max_bytes:
        raise InvalidArgument(f"{FIELD} is not allowed: at most {max_bytes} bytes (rest.fetch.max_bytes)",
                              field=FIELD)
    return data


def public_address(host: str, port: int, allow_hosts: tuple[str, ...]) -> str:
    """The address to connect to for `host`: every address it resolves to must be a public one, unless the
    host is allowed by name or address."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise InvalidArgument(f"{FIELD}: host {host!r} does not resolve", field=FIELD) from None
    addresses = [info[4][0] for info in infos]
    allowed = host in allow_hosts or any(a in allow_hosts for a in addresses)
    for a in addresses:
        ip = ipaddress.ip_address(a.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if not allowed and not ip.is_global:
            raise InvalidArgument(f"{FIELD} is not allowed: {host} resolves to a non-public address ({a}: loopback,"
                                  " private, link-local or reserved); rest.fetch.allow_hosts may name it",
                                  field=FIELD)
    return addresses[0]


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a checked address, with the URL's host for SNI and the certificate."""

    def __init__(self, host: str, address: str, **kwargs) -> None:
        super().__init__(host, **kwargs)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, address: str, **kwargs) -> None:
        super().__init__(host, **kwargs)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


def fetch_url(url: str, fetch: RestFetchConfig) -> bytes:
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        raise InvalidArgument(f"{FIELD} is not allowed: a URL with a host", field=FIELD)
    https = parts.scheme.lower() == "https"
    port = parts.port or (443 if https else 80)
    address = public_address(parts.hostname, port, fetch.allow_hosts)
    kwargs = {"port": port, "timeout": fetch.timeout_seconds}
    conn = (_PinnedHTTPS(parts.hostname, address, context=ssl.create_default_context(), **kwargs) if https
            else _PinnedHTTP(parts.hostname, address, **kwargs))
    try:
        conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                     headers={"user-agent": "kino-reference-fetch", "accept": "image/*"})
        response = conn.getresponse()
        if response.status != 200:
            raise InvalidArgument(f"{FIELD}: fetching it answered HTTP {response.status} (redirects are not "
                                  "followed)", field=FIELD)
        data = response.read(fetch.max_bytes + 1)
    except (OSError, http.client.HTTPException) as e:
        raise InvalidArgument(f"{FIELD}: it could not be fetched: {type(e).__name__}: {e}", field=FIELD) from None
    finally:
        conn.close()
    if len(data) > fetch.max_bytes:
        raise InvalidArgument(f"{FIELD} is not allowed: at most {fetch.max_bytes} bytes (rest.fetch.max_bytes)",
                              field=FIELD)
    return data
