"""Request targets apt sends, turned into an upstream URL or a local page.

Owns: the two ways apt addresses dhtdeb — absolute-form (`Acquire::http::Proxy`) and URL-prefix
(`http://127.0.0.1:9977/<mirror-host>/<path>`) — and the refusal of anything that could escape the
archive: dot segments, encoded slashes, control characters, odd hosts. Trusts nothing: the input is
whatever a client wrote on the request line.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from dhtdeb.errors import DhtdebError

MAX_TARGET = 4096
LOCAL_PATHS = frozenset({"/", "/health", "/status.json", "/metrics", "/cache.json"})
# `dhtdeb cache pin|unpin|evict`: the only local pages that take POST (see proxy/server.py). Only
# these three words are taken from URL-prefix requests for a mirror host called "cache".
CACHE_ACTION = re.compile(r"/cache/(pin|unpin|evict)/([^/]*)")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]{2,45}\]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DOT_SEGMENT = re.compile(r"(?:^|/)\.\.?(?:/|$)")
_SLASHES = re.compile(r"/{2,}")


class BadTarget(DhtdebError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True, slots=True)
class LocalTarget:
    path: str
    query: str


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    url: str  # canonical: http://host[:port]/decoded/path (port omitted when 80)
    authority: str


def _authority(text: str) -> str:
    host, port = text, ""
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[: end + 1], text[end + 1 :]
        if not _IPV6.fullmatch(host) or (rest and not rest.startswith(":")):
            raise BadTarget(400, f"bad host {text!r}")
        port = rest[1:]
    elif ":" in text:
        host, port = text.rsplit(":", 1)
    if not host.startswith("[") and not _HOST.fullmatch(host):
        raise BadTarget(400, f"bad host {text!r}")
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise BadTarget(400, f"bad port in {text!r}")
        if int(port) != 80:
            return f"{host.lower()}:{int(port)}"
    return host.lower()


def _clean_path(raw: str) -> str:
    if "\\" in raw or "%2f" in raw.lower() or "%5c" in raw.lower():
        raise BadTarget(400, "encoded or backward slash in path")
    path = urllib.parse.unquote(raw, errors="strict") if "%" in raw else raw
    if any(c in path for c in "%?#"):
        # Encoded twice (`%252e%252e`) or a query smuggled into the path: the upstream URL is
        # built from the decoded path, and its URL parser would decode `%2e%2e` into `..`.
        raise BadTarget(400, "encoded %, ? or # in path")
    if _CONTROL.search(path):
        raise BadTarget(400, "control character in path")
    if _DOT_SEGMENT.search(path):
        raise BadTarget(400, "dot segment in path")
    if not path.startswith("/"):
        path = "/" + path
    return _SLASHES.sub("/", path)


def parse_target(raw: str) -> LocalTarget | UpstreamTarget:
    """Classify a request target. Raises BadTarget (with the HTTP status to answer)."""
    if len(raw) > MAX_TARGET:
        raise BadTarget(414, "request target too long")
    try:
        if raw.startswith("/"):
            path, _, query = raw.partition("?")
            if path in LOCAL_PATHS or path.startswith("/peers/") or CACHE_ACTION.fullmatch(path):
                return LocalTarget(path, query)
            host_part, slash, rest = path[1:].partition("/")
            if not slash:
                raise BadTarget(404, "URL-prefix requests look like /<mirror-host>/<path>")
            authority = _authority(urllib.parse.unquote(host_part))
            return UpstreamTarget(f"http://{authority}{_clean_path('/' + rest)}", authority)
        scheme, sep, remainder = raw.partition("://")
        if not sep:
            raise BadTarget(400, "request target is neither a path nor an absolute URL")
        if scheme.lower() != "http":
            raise BadTarget(400, f"only http:// can be proxied, not {scheme}://")
        remainder = remainder.partition("#")[0].partition("?")[0]
        authority_text, _, rest = remainder.partition("/")
        if "@" in authority_text:
            raise BadTarget(400, "credentials in proxied URL")
        authority = _authority(authority_text)
        return UpstreamTarget(f"http://{authority}{_clean_path('/' + rest)}", authority)
    except UnicodeDecodeError:
        raise BadTarget(400, "path is not UTF-8") from None
