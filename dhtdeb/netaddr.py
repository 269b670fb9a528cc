"""Parsing of HOST:PORT and CIDR options given by the operator."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from dhtdeb.errors import ConfigError


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(text: str, *, default_port: int | None = None) -> HostPort:
    """Parse `host:port`, `[v6]:port`, or a bare host when `default_port` is given."""
    text = text.strip()
    host: str
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"bad address {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ConfigError(f"bad address {text!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        host, port_text = text, None  # bare IPv6 address
    else:
        host, port_text = text, None
    if not host:
        raise ConfigError(f"bad address {text!r}: empty host")
    if port_text is None:
        if default_port is None:
            raise ConfigError(f"bad address {text!r}: expected HOST:PORT")
        return HostPort(host, default_port)
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"bad address {text!r}: port is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"bad address {text!r}: port out of range")
    return HostPort(host, port)


def parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise ConfigError(f"bad network {text!r}: {exc}") from None


def parse_mirror(text: str) -> HostPort:
    """A mirror the proxy may fetch from: `HOST` (port 80) or `HOST:PORT`, the host in lower
    case (as the proxy writes a request's authority)."""
    stripped = text.strip()
    if not stripped or any(c in stripped for c in "/@?# \t"):
        raise ConfigError(f"bad mirror {text!r}: expected HOST or HOST:PORT (no scheme, no path)")
    found = parse_host_port(stripped, default_port=80)
    if found.port == 0:
        raise ConfigError(f"bad mirror {text!r}: port 0")
    return HostPort(found.host.lower(), found.port)
