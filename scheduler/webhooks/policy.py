"""Which callback URLs a request may name: the allow-list, and addresses never to call.

A request's ``callback_url`` makes the scheduler send an HTTP request on the
submitter's behalf, a classic server-side request forgery vector. It is only
honoured when it matches an operator's pattern in ``webhooks.allow``, and
never when it points at link-local or cloud metadata addresses, whatever the
allow-list says.

Two layers, because a URL's text does not say where it leads:

* :func:`callback_refusal` judges the text: scheme, metadata host names,
  literal addresses (including the legacy numeric forms ``2852039166`` and
  ``0xa9fea9fe`` that resolvers accept for 169.254.169.254, and IPv4 hidden
  in IPv6), and the allow-list. It is pure and cheap: the worker calls it
  for every request that names a callback, the dispatcher again before
  every attempt (the allow-list may have changed since).
* :func:`address_refusal` judges one resolved address; the dispatcher's
  connection guard (:mod:`scheduler.webhooks.transport`) applies it to
  every address a callback host resolves to, at connect time, so a name
  that resolves (or is rebound) to a metadata address is never connected.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import socket
from urllib.parse import urlsplit, urlunsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata endpoints reachable by name from inside a VM or pod.
METADATA_HOSTS = frozenset(
    {
        "metadata.google.internal",
        "metadata.goog",
        "metadata",
        "instance-data",
        "instance-data.ec2.internal",
        "100.100.100.200",  # Alibaba Cloud metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
    }
)

# ... and by address. 169.254.169.254 (AWS, GCP, Azure, OpenStack, ...) is
# link-local and refused as such; these are the ones outside link-local.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    {
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
        ipaddress.ip_address("192.0.0.192"),  # Oracle Cloud (classic)
        ipaddress.ip_address("168.63.129.16"),  # Azure WireServer
    }
)

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# What inet_aton accepts besides dotted quads: 1-4 parts, decimal, octal or hex.
_LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$")


def address_refusal(ip: IPAddress) -> str | None:
    """None when a connection to ``ip`` is acceptable; otherwise why not.

    Loopback and private addresses are acceptable: an operator may well run
    a receiver next to the scheduler, and the allow-list is where they say so.
    """
    # ::ffff:a.b.c.d and 64:ff9b::a.b.c.d reach the IPv4 address inside: judge that one.
    candidate = _embedded_ipv4(ip) or ip
    if candidate in METADATA_ADDRESSES:
        return f"address {ip} is a cloud metadata endpoint"
    if candidate.is_link_local:
        return f"address {ip} is link-local (cloud metadata lives there)"
    if candidate.is_multicast or candidate.is_unspecified or candidate.is_reserved:
        return f"address {ip} is multicast, unspecified or reserved"
    return None


def literal_address(host: str) -> IPAddress | None:
    """The address a host string denotes by itself, or None for a name that must be resolved.

    Besides standard IPv4/IPv6 text this accepts what ``inet_aton`` accepts
    (``2852039166``, ``0xa9fea9fe``, ``169.254.43518``), because the system
    resolver turns those into addresses too.
    """
    host = host.strip("[]").lower().rstrip(".")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def callback_refusal(url: str, allow: list[str]) -> str | None:
    """None when ``url`` may be called; otherwise the reason it is refused."""
    try:
        parsed = httpx.URL(url)
    except Exception:
        return "callback_url is not a valid URL"
    if parsed.scheme not in ("http", "https"):
        return "callback_url must be http:// or https://"
    host = parsed.host.lower().rstrip(".")
    if not host:
        return "callback_url has no host"
    if host in METADATA_HOSTS:
        return f"callback_url host {host} is a cloud metadata endpoint"
    ip = literal_address(host)
    if ip is not None:
        refusal = address_refusal(ip)
        if refusal is not None:
            return f"callback_url {refusal}"
    if not allow:
        return "callback_url is not allowed: webhooks.allow is empty"
    if not any(fnmatch.fnmatchcase(url, pattern) for pattern in allow):
        return f"callback_url {url} matches no pattern in webhooks.allow"
    return None


_SECRET_QUERY_KEYS = re.compile(r"(token|secret|key|sig|signature|password|passwd|pwd|auth|code)", re.I)


def display_url(url: str) -> str:
    """``url`` fit for logs and the CLI: the password and secret-looking query values replaced by ``***``.

    Receivers often carry a credential in the URL (``https://user:pw@host``,
    ``?token=...``); deliveries store the URL as configured, and every place
    that shows one goes through here. Works on the text, so even a URL that
    does not parse is shown without its password.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hostport = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
    query = "&".join(
        f"{pair.split('=', 1)[0]}=***" if "=" in pair and _SECRET_QUERY_KEYS.search(pair.split("=", 1)[0])
        else pair
        for pair in parts.query.split("&")
    ) if parts.query else ""  # fmt: skip
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside ``::ffff:a.b.c.d`` or NAT64 ``64:ff9b::a.b.c.d``, which reach it."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None
