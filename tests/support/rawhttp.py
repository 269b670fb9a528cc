"""Plain HTTP requests through the proxy, for tests that look at statuses and headers."""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def request(
    proxy: str,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> RawResponse:
    """Send one request to `proxy` (HOST:PORT) with `target` as the request target, as apt would."""
    host, port = proxy.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request(method, target, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        return RawResponse(response.status, {k.title(): v for k, v in response.getheaders()}, body)
    finally:
        connection.close()


def exchange(proxy: str, data: bytes, responses: int, timeout: float = 30.0) -> list[RawResponse]:
    """Write raw bytes (e.g. pipelined requests) to the proxy on one connection; read `responses`
    answers in order. Stops early if the proxy closes the connection."""
    host, port = proxy.rsplit(":", 1)
    answers: list[RawResponse] = []
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        reader = sock.makefile("rb")
        for _ in range(responses):
            status_line = reader.readline(65536)
            if not status_line:
                break
            status = int(status_line.split()[1])
            headers: dict[str, str] = {}
            while (line := reader.readline(65536)) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().title()] = value.strip()
            body = reader.read(int(headers.get("Content-Length", "0")))
            answers.append(RawResponse(status, headers, body))
    return answers
