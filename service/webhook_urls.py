"""Which webhook URLs the service may call: http(s) only, and (unless the operator allows
it) no loopback, private, link-local or otherwise non-public address, so a tenant cannot make
the workers probe the network they run in (cloud metadata at 169.254.169.254, say)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


def url_problem(url: str, *, allow_private: bool, resolve: bool = False) -> str | None:
    """Why ``url`` may not be called, or None.

    Without ``resolve`` (the API, when an endpoint is registered: no DNS in a request) an
    address literal must be public and ``localhost`` is refused; with it (the worker, before
    each delivery) every address the host resolves to must be public."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"not a valid URL ({e})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    if parts.username or parts.password:
        return "must not hold credentials"
    if allow_private:
        return None
    host = parts.hostname
    fix = "; an operator can allow such receivers with CLIPFIT_WEBHOOK_ALLOW_PRIVATE=true"
    if host == "localhost" or host.endswith(".localhost"):
        return f"is a loopback host{fix}"
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:  # the forms C libraries also read as IPv4: 2130706433, 0x7f.1, 127.1
            addresses = [ipaddress.ip_address(socket.inet_aton(host))]
        except (OSError, ValueError):
            addresses = []
    if not addresses:
        if not resolve:
            return None
        try:
            infos = socket.getaddrinfo(host, port or (443 if parts.scheme == "https" else 80),
                                       proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError):
            return f"host {host[:100]!r} does not resolve"
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for address in addresses:
        if not _public(address):
            return f"is a non-public address ({address}){fix}"
    return None


NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Global unicast, and for IPv6 forms that carry an IPv4 address (mapped, 6to4, Teredo,
    NAT64, IPv4-compatible), that address global too."""
    if not address.is_global or address.is_multicast or address.is_reserved:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        inner = [address.ipv4_mapped, address.sixtofour,
                 address.teredo[1] if address.teredo else None]
        if address in NAT64 or int(address) >> 32 == 0:
            inner.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        return all(_public(v4) for v4 in inner if v4 is not None)
    return True
