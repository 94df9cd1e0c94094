"""Images the API is given as http(s) URLs: off unless a setting allows them, and never local.

A URL makes the server open a connection on the client's behalf, so a client
could reach what only the server can: its own loopback services, a cloud
metadata address (169.254.169.254), the private network behind it. Every
address the host name resolves to must be a public one; the connection then
goes to that checked address (a second lookup could answer differently), and
redirects are not followed (they could point anywhere).
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from urllib.parse import urlsplit

from backend.images.loading import ImageInputError

MAX_DOWNLOAD_BYTES = 50 * 2**20
TIMEOUT_SECONDS = 15


def is_url(data: str) -> bool:
    return data.strip().lower().startswith(("http://", "https://"))


def public_address(host: str, port: int, what: str) -> str:
    """The first address of `host`, after checking that every one of them is public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise ImageInputError(f"{what}: cannot resolve {host!r} ({err})") from None
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not address.is_global or address.is_multicast:
            raise ImageInputError(f"{what}: {host!r} is a loopback, link-local or private address ({address}); "
                                  "the server does not fetch from those")
        addresses.append(str(address))
    if not addresses:
        raise ImageInputError(f"{what}: {host!r} has no address")
    return addresses[0]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address already checked, whatever the host name resolves to now."""

    def __init__(self, host: str, address: str, port: int):
        super().__init__(host, port, timeout=TIMEOUT_SECONDS)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    def connect(self) -> None:
        super().connect()
        self.sock = ssl.create_default_context().wrap_socket(self.sock, server_hostname=self.host)


def fetch_image_bytes(url: str, what: str, *, allowed: bool) -> bytes:
    """The body of `url`, or ImageInputError saying why not."""
    if not allowed:
        raise ImageInputError(f"{what} is a URL, and fetching URLs is turned off on this server "
                              "(setting api_enable_requests); send the image itself, base64-encoded")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ImageInputError(f"{what}: not an http(s) URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ImageInputError(f"{what}: the URL's port is not a number") from None
    address = public_address(parts.hostname, port, what)
    connection_type = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    connection = connection_type(parts.hostname, address, port)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("GET", path, headers={"User-Agent": "sd-studio"})
        response = connection.getresponse()
        if response.status != 200:
            raise ImageInputError(f"{what}: the server answered {response.status} {response.reason} "
                                  "(redirects are not followed)")
        body = response.read(MAX_DOWNLOAD_BYTES + 1)
    except (OSError, http.client.HTTPException) as err:
        raise ImageInputError(f"{what}: could not download {url!r} ({err})") from None
    finally:
        connection.close()
    if len(body) > MAX_DOWNLOAD_BYTES:
        raise ImageInputError(f"{what}: larger than {MAX_DOWNLOAD_BYTES // 2**20} MB")
    return body
