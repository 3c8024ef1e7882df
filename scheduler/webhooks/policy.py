"""Which callback URLs a request may name: the allow-list, and addresses never to call.

A request's ``callback_url`` makes the scheduler send an HTTP request on the
submitter's behalf, a classic server-side request forgery vector. It is only
honoured when it matches an operator's pattern in ``webhooks.allow``.

How a URL is judged (:func:`callback_refusal`), in order:

1. **One parser, the sender's own.** The URL is parsed by :class:`httpx.URL`,
   the parser of the client that will send the request, so what is matched
   is exactly where the request goes (no differential between a checking
   parser and a sending one). Text other parsers read differently is refused
   before parsing: backslashes, whitespace and control characters.
2. **Shape.** ``http`` or ``https``; a host; no userinfo (``user:pw@``, the
   classic ``https://allowed.example@127.0.0.1/`` trick); a port in
   1..65535; no percent-encoded dot, slash, backslash or NUL in the host or
   path (``%2e``, ``%2f``, ``%5c``, ``%00``: decoded differently by different
   servers); a host made of DNS labels (letters, digits, ``-``, ``_``;
   IDNA names in their ``xn--`` form) or an IP literal; no IPv6 zone id.
3. **Addresses never called**, whatever the allow-list says: link-local
   (169.254.0.0/16 and fe80::/10, where cloud metadata lives), the cloud
   metadata names and addresses, multicast, unspecified and reserved, also
   when hidden in IPv6 (``::ffff:a.b.c.d``, NAT64).
4. **IP literals** are written canonically (``127.0.0.1``, ``[::1]``): the
   legacy numeric forms resolvers accept (``2130706433``, ``0x7f.1``,
   ``0177.0.0.1``) are refused outright, and so is a host whose last label
   is a number (``foo.0x7f``), which some parsers read as an address. A
   canonical literal, and the names ``localhost`` and ``*.localhost``, are
   allowed only when a pattern names that exact host; a wildcard never
   reaches an address.
5. **The allow-list.** Each pattern (:class:`Pattern`) is matched
   component by component: scheme exactly; host label by label, where ``*``
   stands for one whole label (or part of one, ``hook-*``) and never for a
   dot; port exactly (absent = the scheme's default, ``*`` = any); path as a
   glob over the path as sent (``*`` may cross ``/`` but never leaves the
   path). The query is not matched. A pattern therefore never matches
   across the authority/path boundary: ``https://*.ci.example.com/x/*``
   cannot match ``http://127.0.0.1:5432/.ci.example.com/x/y``.

What the text cannot say, where a *name* leads, is checked when
connecting: :mod:`scheduler.webhooks.transport` resolves the host itself and
refuses the connection if any address is one of (3), or is loopback,
private, shared (100.64.0.0/10) or otherwise not global, unless a pattern
names that exact host (:func:`exact_hosts`); it then connects only to the
addresses it checked, so a DNS answer rebound between check and connect
does not matter. Configured ``webhooks.urls`` are the operator's own and are
not subject to any of this.

Why hand-written matching: the allow-list needs per-component semantics no
URL library offers; the parsing itself is httpx's.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

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

DEFAULT_PORTS = {"http": 80, "https": 443}
ANY_PORT = -1

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# What inet_aton accepts besides dotted quads: 1-4 parts, decimal, octal or hex.
_LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
_PATTERN_LABEL = re.compile(r"^[a-z0-9_*?-]{1,63}$")
_BAD_ENCODINGS = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)
_BAD_CHARS = re.compile(r"[\\\s\x00-\x1f\x7f]")
_PATTERN = re.compile(
    r"^(?P<scheme>[a-z]+)://(?P<host>\[[0-9a-f:.]+\]|[^/:?#@\[\]\\]+)(?::(?P<port>\*|[0-9]{1,5}))?"
    r"(?P<path>/[^?#\\]*)?$",
    re.IGNORECASE,
)


def address_refusal(ip: IPAddress) -> str | None:
    """None unless ``ip`` is never to be called, whatever the allow-list: then why.

    Link-local, cloud metadata, multicast, unspecified and reserved
    addresses. Loopback and private addresses are judged separately
    (:func:`is_internal`): an operator may name such a host exactly.
    """
    # ::ffff:a.b.c.d and 64:ff9b::a.b.c.d reach the IPv4 address inside: judge that one.
    candidate = _embedded_ipv4(ip) or ip
    if candidate in METADATA_ADDRESSES:
        return f"address {ip} is a cloud metadata endpoint"
    if candidate.is_link_local:
        return f"address {ip} is link-local (cloud metadata lives there)"
    if candidate.is_loopback:
        return None  # internal: allowed only when named exactly (::1 sits in the "reserved" ::/8)
    if candidate.is_multicast or candidate.is_unspecified or candidate.is_reserved:
        return f"address {ip} is multicast, unspecified or reserved"
    return None


def is_internal(ip: IPAddress) -> bool:
    """Loopback, private, shared (CGNAT) or any other non-global address (IPv4 inside IPv6 included)."""
    candidate = _embedded_ipv4(ip) or ip
    return candidate.is_loopback or candidate.is_private or not candidate.is_global


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


@dataclass(frozen=True, slots=True)
class Pattern:
    """One ``webhooks.allow`` entry, parsed: ``scheme://host[:port][/path-glob]``.

    ``labels`` are the host's DNS labels, each a glob that cannot match a
    dot (or ``address``, for an IP literal, compared exactly); ``port`` is
    the port (:data:`ANY_PORT` for ``*``); ``path`` the glob over the path
    (``/*`` when the pattern has none).
    """

    text: str
    scheme: str
    labels: tuple[str, ...]
    address: IPAddress | None
    port: int
    path: str

    @property
    def exact_host(self) -> str | None:
        """The host this pattern names exactly (no wildcard), in the form :func:`normal_host` gives."""
        if self.address is not None:
            return str(self.address)
        if any(_has_glob(label) for label in self.labels):
            return None
        return ".".join(self.labels)

    def matches(self, url: CallbackUrl) -> bool:
        if url.scheme != self.scheme:
            return False
        if self.port != ANY_PORT and url.port != self.port:
            return False
        if self.address is not None:
            if url.address != self.address:
                return False
        else:
            if url.address is not None or len(url.labels) != len(self.labels):
                return False
            pairs = zip(url.labels, self.labels, strict=True)
            if not all(fnmatch.fnmatchcase(got, want) for got, want in pairs):
                return False
        return fnmatch.fnmatchcase(url.path, self.path)


def parse_pattern(text: str) -> Pattern:
    """Parse one ``webhooks.allow`` pattern; ValueError says what is wrong with it."""
    found = _PATTERN.match(text.strip())
    if found is None:
        raise ValueError(
            f"{text!r} is not a URL pattern scheme://host[:port][/path] "
            "(no userinfo, query or backslash; e.g. https://*.hooks.example.com/scheduler/*)"
        )
    scheme = found["scheme"].lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"{text!r}: the scheme must be http or https")
    host = found["host"].lower()
    address: IPAddress | None = None
    labels: tuple[str, ...] = ()
    if host.startswith("["):
        try:
            address = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{text!r}: {host} is not an IPv6 address") from None
    else:
        host = host.removesuffix(".")
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            labels = tuple(host.split("."))
        for label in labels:
            if not _PATTERN_LABEL.match(label):
                raise ValueError(f"{text!r}: host label {label!r}: letters, digits, -, _ or the wildcard *")
        if labels and _NUMERIC_LABEL.match(labels[-1]):
            raise ValueError(f"{text!r}: write an IPv4 host as a dotted quad (a.b.c.d)")
    port_text = found["port"]
    if port_text is None:
        port = DEFAULT_PORTS[scheme]
    elif port_text == "*":
        port = ANY_PORT
    else:
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"{text!r}: port {port} is out of range")
    path = found["path"] or "/*"
    return Pattern(text, scheme, labels, address, port, path)


def parse_patterns(texts: list[str]) -> list[Pattern]:
    """Every pattern of ``webhooks.allow``, in order (ValueError on the first bad one)."""
    return [parse_pattern(t) for t in texts]


def exact_hosts(allow: list[str] | list[Pattern]) -> frozenset[str]:
    """The hosts named without a wildcard: the only ones that may be (or resolve to) internal addresses."""
    patterns = [p if isinstance(p, Pattern) else _try_parse(p) for p in allow]
    return frozenset(h for p in patterns if p is not None and (h := p.exact_host) is not None)


@dataclass(frozen=True, slots=True)
class CallbackUrl:
    """A callback URL as the policy sees it: the components that are matched."""

    scheme: str
    host: str  # normal form: lowercase, ASCII (IDNA), no trailing dot, IPv6 without brackets
    labels: tuple[str, ...]
    address: IPAddress | None
    port: int
    path: str


def parse_callback(url: str) -> CallbackUrl | str:
    """The matched components of ``url``, or why it cannot be considered at all (a string)."""
    if not isinstance(url, str) or not url:
        return "callback_url is not a valid URL"
    if _BAD_CHARS.search(url):
        return "callback_url contains a backslash, whitespace or a control character"
    try:
        import httpx  # here, not at the top: the configuration imports display_url at start-up

        parsed = httpx.URL(url)
        raw_host = parsed.raw_host.decode("ascii")
        port = parsed.port
    except Exception:
        return "callback_url is not a valid URL"
    scheme = parsed.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        return "callback_url must be http:// or https://"
    if parsed.userinfo:
        return "callback_url must not carry credentials (user:password@)"
    if not raw_host:
        return "callback_url has no host"
    if "%" in raw_host:
        return "callback_url host must not be percent-encoded or carry an IPv6 zone id"
    if port is not None and not 1 <= port <= 65535:
        return "callback_url port is out of range"
    wire_path = parsed.raw_path.decode("ascii").split("?", 1)[0]
    if _BAD_ENCODINGS.search(wire_path):
        return "callback_url path must not contain encoded dots, slashes, backslashes or NUL"
    host = raw_host.lower()
    address: IPAddress | None = None
    labels: tuple[str, ...] = ()
    if ":" in host:
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            return "callback_url host is not a valid IPv6 address"
    else:
        if host.endswith(".."):
            return "callback_url host has an empty label"
        host = host.removesuffix(".")
        legacy = literal_address(host)
        if legacy is not None:
            if str(legacy) != host:
                return "callback_url host is a numeric address not written as a dotted quad"
            address = legacy
        else:
            labels = tuple(host.split("."))
            if not all(_LABEL.match(label) for label in labels):
                return "callback_url host is not a valid DNS name"
            if _NUMERIC_LABEL.match(labels[-1]):
                return "callback_url host ends in a number but is not an IPv4 address"
    return CallbackUrl(
        scheme=scheme,
        host=host if address is None else str(address),
        labels=labels,
        address=address,
        port=port if port is not None else DEFAULT_PORTS[scheme],
        path=wire_path or "/",
    )


def callback_refusal(url: str, allow: list[str] | list[Pattern]) -> str | None:
    """None when ``url`` may be called; otherwise the reason it is refused (never echoing credentials)."""
    parsed = parse_callback(url)
    if isinstance(parsed, str):
        return parsed
    if parsed.host in METADATA_HOSTS:
        return f"callback_url host {parsed.host} is a cloud metadata endpoint"
    if parsed.address is not None:
        refusal = address_refusal(parsed.address)
        if refusal is not None:
            return f"callback_url {refusal}"
    if not allow:
        return "callback_url is not allowed: webhooks.allow is empty"
    patterns = [p if isinstance(p, Pattern) else _try_parse(p) for p in allow]
    valid = [p for p in patterns if p is not None]
    if not any(p.matches(parsed) for p in valid):
        return f"callback_url {display_url(url)} matches no pattern in webhooks.allow"
    internal_name = parsed.host == "localhost" or parsed.host.endswith(".localhost")
    if (parsed.address is not None or internal_name) and parsed.host not in exact_hosts(valid):
        what = "an IP address" if parsed.address is not None else "a loopback name"
        return f"callback_url host {parsed.host} is {what}: allowed only when a pattern names it exactly"
    return None


def callback_checker(allow: list[str] | list[Pattern]) -> Callable[[str], str | None]:
    """:func:`callback_refusal` bound to (a copy of) one allow-list: what the planning is handed."""
    patterns = allow.copy()

    def refusal(url: str) -> str | None:
        return callback_refusal(url, patterns)

    return refusal


def display_url(url: str) -> str:
    """``url`` fit for logs, errors, metrics and the CLI: userinfo, query values and fragment hidden.

    Receivers often carry a credential in the URL (``https://user:pw@host``,
    ``https://token@host``, ``?token=...``); deliveries store the URL as
    configured, and every place that shows one goes through here. Every
    query *value* is hidden, not only secret-looking ones: a name does not
    say whether its value is a credential. Works on the text, so even a URL
    that does not parse is shown without its userinfo.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        return scrub_text(url)
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    pairs = parts.query.split("&") if parts.query else []
    query = "&".join(f"{pair.split('=', 1)[0]}=***" if "=" in pair else "***" for pair in pairs)
    fragment = "***" if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def scrub(text: str, url: str) -> str:
    """``text`` (an error message) with every secret part of ``url`` replaced by its displayed form."""
    if url and url in text:
        text = text.replace(url, display_url(url))
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub_text(text)
    secrets = []
    if "@" in parts.netloc:
        secrets.append(parts.netloc.rsplit("@", 1)[0])
    if parts.query:
        secrets.extend(v for pair in parts.query.split("&") if (v := pair.partition("=")[2]))
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 3:
            text = text.replace(secret, "***")
    return scrub_text(text)


def scrub_text(text: str) -> str:
    """Any ``scheme://userinfo@`` in free text, with the userinfo hidden."""
    return re.sub(r"(?i)([a-z][a-z0-9+.-]*://)[^/@\s]*@", r"\1***@", text)


def _try_parse(text: str) -> Pattern | None:
    try:
        return parse_pattern(text)
    except ValueError:
        return None


def _has_glob(label: str) -> bool:
    return any(c in label for c in "*?[")


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside ``::ffff:a.b.c.d`` or NAT64 ``64:ff9b::a.b.c.d``, which reach it."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None
