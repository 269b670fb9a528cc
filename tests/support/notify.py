"""The service manager's end of sd_notify: what systemd does with $NOTIFY_SOCKET, for tests that
run `dhtdeb serve` as its unit would (tests/test_systemd.py, tests/test_deb.py)."""

from __future__ import annotations

import socket
import time

NOTIFY_WAIT = 10.0  # seconds: bound on every wait for a datagram


class NotifySocket:
    """The service manager's end: a bound AF_UNIX datagram socket, read with a deadline."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        name = self.sock.getsockname()
        # As systemd writes it in $NOTIFY_SOCKET: a path, or "@name" for an abstract socket.
        self.env = "@" + name[1:].decode() if isinstance(name, bytes) else name

    def receive(self, timeout: float = NOTIFY_WAIT) -> dict[str, str]:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            raise AssertionError(f"no notification within {timeout}s") from None
        fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
        return fields

    def receive_until(self, key: str, deadline: float) -> list[dict[str, str]]:
        """Messages up to and including the first one carrying `key`."""
        messages: list[dict[str, str]] = []
        while not messages or key not in messages[-1]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key}= before the deadline; got {messages}")
            messages.append(self.receive(left))
        return messages

    def close(self) -> None:
        self.sock.close()
