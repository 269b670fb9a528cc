"""The service manager's notification protocol (sd_notify), written with the standard library.

Owns: the one datagram socket to `$NOTIFY_SOCKET` (a path, or an abstract name written with a
leading `@`), the messages sent on it (READY=1, STATUS=, WATCHDOG=1, STOPPING=1) and the watchdog
cadence read from `$WATCHDOG_USEC` / `$WATCHDOG_PID`. Without `$NOTIFY_SOCKET` every call does
nothing, so the daemon runs the same under systemd, by hand and in the tests.
Trusts: the environment systemd gives the main process. Sends are best effort and never block:
a manager that is gone or slow to read must not stop the daemon from serving apt.

The watchdog pings come from a task on the daemon's event loop (`keepalive`), at half the interval
systemd asked for: a loop that is stuck runs no task, sends no ping, and systemd restarts the
daemon. A thread would keep pinging for a dead loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

__all__ = ["Notifier", "keepalive", "watchdog_interval"]

log = logging.getLogger(__name__)

# The variables are taken out of the environment once read, so that the programs the daemon runs
# (gpgv, gpg) do not inherit them: only the main process may speak for the service.
_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _address(value: str) -> str | bytes | None:
    """The socket address `$NOTIFY_SOCKET` names: an absolute path, or an abstract name (`@name`,
    sent as NUL + name). Anything else (systemd also knows vsock, which we do not need) is None."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds within which systemd wants a WATCHDOG=1, or None when it wants none (no or a bad
    `$WATCHDOG_USEC`, or `$WATCHDOG_PID` naming another process: the variables were inherited)."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 1_000_000


class Notifier:
    """Messages to the service manager. `Notifier.from_environment()` is what the daemon uses;
    a Notifier without an address sends nothing."""

    def __init__(self, address: str | bytes | None, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog = watchdog  # seconds, as systemd asked (pings go at half of it)
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> Notifier:
        """Read and remove the notification variables (from `os.environ` unless given)."""
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        address = _address(raw) if raw else None
        if raw and address is None:
            log.warning("ignoring NOTIFY_SOCKET=%s: not a path or an abstract socket name", raw)
        watchdog = watchdog_interval(env, os.getpid()) if address is not None else None
        for name in _VARIABLES:
            env.pop(name, None)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send one datagram of `KEY=value` lines; True when it was handed to the kernel."""
        if self.address is None or not assignments:
            return False
        message = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, socket.MSG_DONTWAIT, self.address)
        except OSError as exc:
            if not self._failed:  # once: a manager that went away would fill the log otherwise
                log.warning("cannot notify the service manager at %r: %s", self.address, exc)
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", _status(status))

    def status(self, status: str) -> bool:
        return self.send(_status(status))

    def ping(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", _status(status))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.split())  # one line: a newline would start another field


STATUS_INTERVAL = 30.0  # seconds between status refreshes when systemd wants no watchdog


async def keepalive(notifier: Notifier, status: Callable[[], str]) -> None:
    """Until cancelled: WATCHDOG=1 every half watchdog interval, and STATUS= whenever `status()`
    says something new (checked at the same ticks). Runs on the event loop on purpose (see top)."""
    if not notifier.enabled:
        return
    interval = notifier.watchdog / 2 if notifier.watchdog else STATUS_INTERVAL
    last = ""
    while True:
        text = status()
        lines = ["WATCHDOG=1"] if notifier.watchdog else []
        if text != last:
            lines.append(_status(text))
            last = text
        notifier.send(*lines)
        await asyncio.sleep(interval)
