"""Which callback URLs a request may name: the allow-list, and addresses never to call.

A request's ``callback_url`` makes the scheduler send an HTTP request on the
submitter's behalf, a classic server-side request forgery vector. It is only
honoured when it matches an operator's pattern in ``webhooks.allow``, and
never when it points at link-local or cloud metadata addresses, whatever the
allow-list says.
"""

from __future__ import annotations

import fnmatch
import ipaddress

import httpx

# Cloud metadata endpoints reachable by name or address from inside a VM or pod.
METADATA_HOSTS = frozenset({
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
    "100.100.100.200",  # Alibaba Cloud metadata
    "fd00:ec2::254",  # AWS IMDS over IPv6
})


def callback_refusal(url: str, allow: list[str]) -> str | None:
    """None when ``url`` may be called; otherwise the reason it is refused."""
    try:
        parsed = httpx.URL(url)
    except Exception:
        return "callback_url is not a valid URL"
    if parsed.scheme not in ("http", "https"):
        return "callback_url must be http:// or https://"
    host = parsed.host.lower().rstrip(".")
    if host in METADATA_HOSTS:
        return f"callback_url host {host} is a cloud metadata endpoint"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and (ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved):
        return f"callback_url address {ip} is link-local, multicast or reserved"
    if not allow:
        return "callback_url is not allowed: webhooks.allow is empty"
    if not any(fnmatch.fnmatchcase(url, pattern) for pattern in allow):
        return f"callback_url {url} matches no pattern in webhooks.allow"
    return None
