#!/usr/bin/python3 -IS
"""apt's `Acquire::http::Proxy-Auto-Detect` program for dhtdeb: one line on stdout, exit 0.

Owns: the answer apt gets for each host it fetches from over http — the dhtdeb proxy URL while the
daemon answers `GET /health` within TIMEOUT seconds, `DIRECT` otherwise — so apt keeps working
while dhtdeb is stopped or has crashed. apt runs it with the URL it is about to fetch as the only
argument, once per host and acquire method process, and fails the download if it exits non-zero
(apt-pkg/contrib/proxy.cc, AutoDetectProxy).
Trusts: nothing; any failure is `DIRECT`.

`dhtdeb setup-apt` installs a copy with PROXY_URL replaced and the interpreter on the first line,
so this file stays standalone: the interpreter's built-in modules only (no urllib, no dhtdeb), run
with `python3 -I -S` because its start-up time is paid per host on every apt run.
"""

from __future__ import annotations

import _socket  # not `socket`: its import (enum, selectors, re) would double the run time
import sys
import time

PROXY_URL = "http://127.0.0.1:9977"
TIMEOUT = 0.1  # seconds for connect, request and status line together


def split_http_url(url: str) -> tuple[str, int] | None:
    """(host, port) of an `http://host[:port][/…]` URL, None for anything else."""
    if not url.lower().startswith("http://"):
        return None
    authority = url[len("http://") :].split("/", 1)[0].rsplit("@", 1)[-1]
    host, port = authority, "80"
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return None
        host, rest = authority[1:end], authority[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                return None
            port = rest[1:]
    elif ":" in authority:
        host, port = authority.rsplit(":", 1)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.lower(), int(port)


def daemon_answers(host: str, port: int, timeout: float) -> bool:
    """True when `GET /health` on host:port gets a 200 status line within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    name = "[" + host + "]" if ":" in host else host
    request = f"GET /health HTTP/1.0\r\nHost: {name}:{port}\r\nConnection: close\r\n\r\n"
    received = b""
    try:
        # A bytes host: a str one would load the idna codec (and `re`) to encode it.
        family, kind, proto, _, address = _socket.getaddrinfo(
            host.encode("ascii"), port, 0, _socket.SOCK_STREAM
        )[0]
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(request.encode("ascii"))
            while b"\r\n" not in received and len(received) < 256:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                sock.settimeout(left)
                chunk = sock.recv(256)
                if not chunk:
                    break
                received += chunk
        finally:
            sock.close()
    except (OSError, UnicodeError, ValueError, IndexError):
        return False
    fields = received.split(b"\r\n", 1)[0].split()
    return len(fields) >= 2 and fields[0].startswith(b"HTTP/") and fields[1] == b"200"


def answer(argv: list[str], proxy_url: str = PROXY_URL, timeout: float = TIMEOUT) -> str:
    """The line for apt: `proxy_url` or `DIRECT`."""
    proxy = split_http_url(proxy_url)
    if proxy is None:
        return "DIRECT"
    # Only http goes through dhtdeb (it does not tunnel https), and a URL-prefix source names
    # dhtdeb itself: it must not be sent to dhtdeb as a proxy request for its own address.
    target = split_http_url(argv[1]) if len(argv) > 1 else None
    if target is None or target == proxy:
        return "DIRECT"
    return proxy_url if daemon_answers(proxy[0], proxy[1], timeout) else "DIRECT"


def main() -> int:
    try:
        line = answer(sys.argv)
    except Exception:
        line = "DIRECT"
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except Exception:
        pass  # apt closed the pipe: nothing to tell, and a non-zero exit would fail its download
    return 0


if __name__ == "__main__":
    sys.exit(main())
