"""Which webhook URLs the service may call: http(s) only, and (unless the operator allows
it) no loopback, private, link-local or otherwise non-public address, so a tenant cannot make
the workers probe the network they run in (cloud metadata at 169.254.169.254, say).

A host is judged by what it means, not by how it is spelled: letter case, one trailing dot
(``localhost.``) and international spellings (``ｌｏｃａｌｈｏｓｔ``) are read as the name
they stand for. An address must be written as itself: the numeric forms that C libraries
also read as IPv4 (``2130706433``, ``0x7f.1``, ``017700000001``, ``127.1``), an address with
a trailing dot and IPv4 inside IPv6 (``[::ffff:127.0.0.1]``) are refused even when public,
because HTTP clients and resolvers disagree about what they mean."""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

from clipfit_core.prompts import shorten

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
FIX = "; an operator can allow such receivers with CLIPFIT_WEBHOOK_ALLOW_PRIVATE=true"
LABEL = re.compile(r"^[a-z0-9_-]{1,63}$")
NUMERIC_LABEL = re.compile(r"^([0-9]+|0x[0-9a-f]*)$")  # the last label of an IPv4 spelling


def url_problem(url: str, *, allow_private: bool, resolve: bool = False) -> str | None:
    """Why ``url`` may not be called, or None.

    Without ``resolve`` (the API, when an endpoint is registered: no DNS in a request) an
    address must be public and written as itself, and ``localhost`` is refused; with it (the
    worker, before each delivery) every address the host resolves to must be public too."""
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
    host = parts.hostname  # lower case; an IPv6 address without its brackets
    try:
        name, address, respelled = _read_host(host)
    except ValueError as e:
        return f"host {shorten(host, 100)} {e}"
    if name == "localhost" or name.endswith(".localhost"):
        return f"is a loopback host{FIX}"
    if address is not None and not _public(address):
        return f"is a non-public address ({address}){FIX}"
    if respelled:
        return f"host {shorten(host, 100)} is an address written unusually: write {respelled}"
    if address is not None or not resolve:
        return None
    try:
        infos = socket.getaddrinfo(name, port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return f"host {shorten(host, 100)} does not resolve"
    for info in infos:
        resolved = ipaddress.ip_address(info[4][0].split("%")[0])
        if not _public(resolved):
            return f"is a non-public address ({resolved}){FIX}"
    return None


def _read_host(host: str) -> tuple[str, Address | None, str | None]:
    """(the name the host stands for, the address it is written as or None, how that address
    must be written when it is written otherwise); ValueError when it is no host name."""
    if ":" in host:  # IPv6, from inside brackets
        try:
            address = ipaddress.IPv6Address(host.replace("%25", "%"))
        except ValueError:
            raise ValueError("is not an IPv6 address") from None
        inner = address.ipv4_mapped  # ::ffff:a.b.c.d is judged, and written, as a.b.c.d
        return (host, address, None) if inner is None else (str(inner), inner, str(inner))
    name = host.removesuffix(".")  # the DNS root's dot
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise ValueError("is not a valid international host name") from None
    labels = name.split(".")
    if not all(LABEL.match(label) for label in labels):
        raise ValueError("is not a host name: labels of letters, digits, '-' and '_' "
                         "joined by single dots")
    if not NUMERIC_LABEL.match(labels[-1]):
        return name, None, None
    try:  # the forms C libraries read as IPv4: 2130706433, 0x7f.1, 017700000001, 127.1
        address = ipaddress.IPv4Address(socket.inet_aton(name))
    except OSError:
        raise ValueError("ends in a number but is no IPv4 address") from None
    return name, address, str(address) if host != str(address) else None


def _public(address: Address) -> bool:
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


NAT64 = ipaddress.ip_network("64:ff9b::/96")
