"""The systemd service: dhtdeb.sdnotify against a real notification socket, a real `dhtdeb serve`
speaking Type=notify (READY only once /health answers, watchdog pings from its loop, STOPPING on
SIGTERM), and systemd/dhtdeb.service checked by systemd-analyze (verify; security exposure).

systemd-analyze is part of Debian's `systemd` package, on every machine this project runs on: its
absence fails the test (with what to install) rather than skipping it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.daemon import DaemonProcess
from support.notify import NOTIFY_WAIT, NotifySocket

from dhtdeb.sdnotify import Notifier, keepalive, watchdog_interval

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "dhtdeb.service"
KEYRING = ROOT / "keys" / "debian-archive-bookworm-stable.gpg"
MAX_EXPOSURE = 2.0
WAIT = NOTIFY_WAIT
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    path = tmp_path / "notify"
    assert len(str(path)) < 100, "AF_UNIX paths are limited to 108 bytes"
    sock = NotifySocket(str(path))
    yield sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket(b"\0dhtdeb-test-" + os.urandom(8).hex().encode())
    yield sock
    sock.close()


# --- dhtdeb.sdnotify ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_messages_arrive(kind: str, request: pytest.FixtureRequest) -> None:
    server: NotifySocket = request.getfixturevalue(f"{kind}_socket")
    environ = {"NOTIFY_SOCKET": server.env, "WATCHDOG_USEC": "400000"}
    notifier = Notifier.from_environment(environ)
    assert environ == {}, "the variables are taken out, so that child processes do not inherit"
    assert notifier.enabled and notifier.watchdog == 0.4
    try:
        assert notifier.ready("serving apt on\nhttp://127.0.0.1:9977")
        assert server.receive() == {"READY": "1", "STATUS": "serving apt on http://127.0.0.1:9977"}
        assert notifier.status("3 files in store")
        assert server.receive() == {"STATUS": "3 files in store"}
        assert notifier.ping()
        assert server.receive() == {"WATCHDOG": "1"}
        assert notifier.stopping()
        assert server.receive() == {"STOPPING": "1", "STATUS": "stopping"}
    finally:
        notifier.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "400000"})
    assert not notifier.enabled and notifier.watchdog is None
    assert not notifier.ready("x") and not notifier.ping() and not notifier.stopping()


def test_a_gone_manager_does_not_raise(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    assert not notifier.ready("x")
    assert not notifier.ping()
    notifier.close()


def test_watchdog_interval() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, 42) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42) == 30.0
    # Inherited from a parent that was the service's main process: not for us.
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "41"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, 42) is None
    assert watchdog_interval({}, 42) is None


def test_notify_socket_of_another_kind_is_ignored() -> None:
    assert not Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


async def test_keepalive_pings_and_reports_new_status(abstract_socket: NotifySocket) -> None:
    notifier = Notifier(abstract_socket.sock.getsockname(), watchdog=0.02)
    texts = iter(["a", "a", "b"])
    task = asyncio.create_task(keepalive(notifier, lambda: next(texts, "b")))
    try:
        received = [await asyncio.to_thread(abstract_socket.receive) for _ in range(4)]
    finally:
        task.cancel()
        notifier.close()
    assert received == [
        {"WATCHDOG": "1", "STATUS": "a"},
        {"WATCHDOG": "1"},
        {"WATCHDOG": "1", "STATUS": "b"},
        {"WATCHDOG": "1"},
    ]


# --- a real daemon --------------------------------------------------------------------------------


def test_daemon_ready_watchdog_stopping(tmp_path: Path, path_socket: NotifySocket) -> None:
    daemon = DaemonProcess(
        tmp_path / "state",
        [KEYRING],
        env={"NOTIFY_SOCKET": path_socket.env, "WATCHDOG_USEC": "400000"},
    )
    with ThreadPoolExecutor(1) as pool:
        # start() waits for addresses.json; the notifications are read here meanwhile, so that
        # READY is judged the moment it arrives.
        started = pool.submit(daemon.start)
        try:
            deadline = time.monotonic() + WAIT + 20
            try:
                before = path_socket.receive_until("READY", deadline)
            except AssertionError:
                if started.done():
                    started.result()  # the daemon's own failure, with the tail of its log
                raise
            assert len(before) == 1, f"messages before READY=1: {before}"
            # READY=1 is sent: the proxy must answer now, with no retry.
            addresses = json.loads((daemon.state_dir / "addresses.json").read_text())
            url = f"http://{addresses['proxy']}/health"
            with _DIRECT.open(url, timeout=5) as response:
                assert response.status == 200
            assert before[0]["STATUS"].startswith(f"serving apt on http://{addresses['proxy']}")
            assert before[0]["STATUS"].endswith("0 files in store")
            started.result(timeout=WAIT)

            pings = 0
            deadline = time.monotonic() + WAIT
            while pings < 3:
                messages = path_socket.receive_until("WATCHDOG", deadline)
                pings += sum("WATCHDOG" in message for message in messages)
        finally:
            code = daemon.stop()
    assert code == 0, daemon.log_tail()
    after = path_socket.receive_until("STOPPING", time.monotonic() + WAIT)
    assert after[-1] == {"STOPPING": "1", "STATUS": "stopping"}


# --- the unit -------------------------------------------------------------------------------------


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail(
            "systemd-analyze not found: install Debian's package `systemd` "
            "(apt-get install systemd) to check systemd/dhtdeb.service"
        )
    return path


def test_unit_starts_the_documented_daemon() -> None:
    lines = UNIT.read_text().splitlines()
    assert "ExecStart=/usr/bin/dhtdeb serve --state-dir /var/lib/dhtdeb" in lines
    assert "Type=notify" in lines and "StateDirectory=dhtdeb" in lines
    assert any(line.startswith("WatchdogSec=") for line in lines)


def test_unit_verifies(tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    # /usr/bin/dhtdeb comes with the Debian package; verify the unit as it would run from here.
    text = UNIT.read_text().replace(
        "ExecStart=/usr/bin/dhtdeb ", f"ExecStart={sys.executable} -m dhtdeb ", 1
    )
    unit = tmp_path / "dhtdeb.service"
    unit.write_text(text)
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stdout + result.stderr


def test_unit_exposure() -> None:
    analyze = _systemd_analyze()
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"Overall exposure level for dhtdeb\.service: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    exposure = float(found.group(1))
    assert exposure <= MAX_EXPOSURE, result.stdout


async def test_a_stuck_loop_sends_no_ping(abstract_socket: NotifySocket) -> None:
    notifier = Notifier(abstract_socket.sock.getsockname(), watchdog=0.02)
    task = asyncio.create_task(keepalive(notifier, lambda: "x"))
    try:
        assert "WATCHDOG" in await asyncio.to_thread(abstract_socket.receive)
        # Block this loop (the receive runs in it): once the pings sent before are read, none may
        # come for 10 ping intervals.
        for _ in range(50):
            try:
                abstract_socket.receive(timeout=0.2)
            except AssertionError:
                break
        else:
            pytest.fail("pings went on while the event loop was blocked")
        # Once the loop runs again, so do the pings.
        assert "WATCHDOG" in await asyncio.to_thread(abstract_socket.receive)
    finally:
        task.cancel()
        notifier.close()
