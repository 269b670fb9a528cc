"""A real `dhtdeb serve` subprocess for end-to-end tests.

Owns: the daemon process (started, stopped, killed, restarted with the same state dir) and its log
file `<state-dir>/daemon.log` (stderr, appended across restarts).
Trusts: the daemon's contract: once every socket is bound it writes `<state-dir>/addresses.json`
atomically, e.g. {"proxy": "127.0.0.1:43211", "peer": "127.0.0.1:40001", "pid": 1234}.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
_POLL_INTERVAL = 0.02
_DHTDEB = (sys.executable, "-m", "dhtdeb")
_PROXY_ENV = ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy")
# Requests from the test itself must never go through an environment proxy.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class DaemonFailed(AssertionError):
    """The daemon died or did not come up; the message carries the tail of its log."""


@dataclass(frozen=True, slots=True)
class DaemonAddresses:
    proxy: str  # "HOST:PORT"
    peer: str
    pid: int


class DaemonProcess:
    """`python -m dhtdeb serve --state-dir D --proxy 127.0.0.1:0 --peer 127.0.0.1:0 --no-dht
    --keyring K… EXTRA…`, started with `start()` or as a context manager.

    `command` replaces `python -m dhtdeb` (the harness self-test runs a stand-in with it).
    `default_addresses` leaves out `--proxy`/`--peer` (the daemon then listens where it does when
    deployed: 127.0.0.1:9977 and 0.0.0.0:9978; only sensible in a network namespace of its own);
    `command_prefix` goes in front of the command line (the fleet harness passes
    `("ip", "netns", "exec", NS)`; that command execs the daemon, so signals reach it)."""

    def __init__(
        self,
        state_dir: Path,
        keyrings: Sequence[Path],
        *,
        extra_args: Sequence[str] = (),
        no_dht: bool = True,
        command: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        default_addresses: bool = False,
        command_prefix: Sequence[str] = (),
    ) -> None:
        self.state_dir = state_dir
        self.keyrings = tuple(keyrings)
        self.extra_args = tuple(extra_args)
        self.no_dht = no_dht
        self.command = tuple(command) if command else _DHTDEB
        self._env_overrides = dict(env or {})
        self.default_addresses = default_addresses
        self.command_prefix = tuple(command_prefix)
        self._process: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None
        self._addresses: DaemonAddresses | None = None

    # --- paths and addresses ----------------------------------------------------------------------

    @property
    def addresses_file(self) -> Path:
        return self.state_dir / "addresses.json"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "daemon.log"

    @property
    def argv(self) -> tuple[str, ...]:
        argv = [*self.command_prefix, *self.command, "serve", "--state-dir", str(self.state_dir)]
        if self.command == _DHTDEB:
            # Not the machine's /etc/dhtdeb/dhtdeb.toml (dhtdeb may be installed where the tests
            # run): no file, every setting at its default. A test's own --config comes later and
            # wins.
            argv += ["--config", "/dev/null"]
        if not self.default_addresses:
            argv += ["--proxy", "127.0.0.1:0", "--peer", "127.0.0.1:0"]
        if self.no_dht:
            argv.append("--no-dht")
        for keyring in self.keyrings:
            argv += ["--keyring", str(keyring)]
        return (*argv, *self.extra_args)

    @property
    def addresses(self) -> DaemonAddresses:
        if self._addresses is None:
            raise RuntimeError("daemon not started")
        return self._addresses

    @property
    def proxy(self) -> str:
        """The apt proxy's "HOST:PORT" (for AptClient's `proxy=`)."""
        return self.addresses.proxy

    @property
    def proxy_url(self) -> str:
        return f"http://{self.addresses.proxy}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("daemon not started")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return "(no daemon log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> DaemonProcess:
        if self.running:
            raise RuntimeError("daemon already running")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.addresses_file.unlink(missing_ok=True)  # a stale file from a previous run
        self._addresses = None
        env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_ENV}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self._env_overrides)
        self._log = self.log_file.open("ab")
        self._log.write(f"--- harness: starting {' '.join(self.argv)}\n".encode())
        self._log.flush()
        self._process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=env,
            start_new_session=True,
        )
        self._addresses = self._wait_for_addresses(timeout)
        return self

    def _wait_for_addresses(self, timeout: float) -> DaemonAddresses:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while True:
            code = self._process.poll()
            if code is not None:
                self._close_log()
                raise DaemonFailed(f"daemon exited with {code} before binding:\n{self.log_tail()}")
            try:
                data = json.loads(self.addresses_file.read_text())
            except FileNotFoundError:
                data = None
            except json.JSONDecodeError as exc:
                # The contract says the file is written atomically: a partial file is a bug.
                raise DaemonFailed(
                    f"addresses.json is not JSON ({exc}):\n{self.log_tail()}"
                ) from exc
            if data is not None:
                return DaemonAddresses(
                    proxy=data.get("proxy", ""),
                    peer=data.get("peer") or data["dht"],
                    pid=int(data["pid"]),
                )
            if time.monotonic() >= deadline:
                self.kill()
                raise DaemonFailed(f"no addresses.json after {timeout}s:\n{self.log_tail()}")
            time.sleep(_POLL_INTERVAL)  # polling a condition with a deadline

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        return self._end(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """SIGKILL: no shutdown code runs (a crash, a power cut)."""
        return self._end(signal.SIGKILL, STOP_TIMEOUT)

    def _end(self, sig: signal.Signals, timeout: float) -> int | None:
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        self._close_log()
        return process.returncode

    def restart(self, timeout: float = START_TIMEOUT) -> DaemonProcess:
        """Stop (SIGTERM) and start again with the same state dir and arguments; new ports."""
        self.stop()
        return self.start(timeout)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> DaemonProcess:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- HTTP on the proxy port -------------------------------------------------------------------

    def get(self, path: str, timeout: float = 10.0) -> bytes:
        """GET a local page of the daemon (e.g. "/health") directly, never through a proxy."""
        with _DIRECT.open(f"{self.proxy_url}{path}", timeout=timeout) as response:
            body: bytes = response.read()
            return body

    def status(self) -> dict[str, Any]:
        data = json.loads(self.get("/status.json"))
        if not isinstance(data, dict):
            raise DaemonFailed(f"/status.json is not an object: {data!r}")
        return data


class BootstrapProcess(DaemonProcess):
    """`python -m dhtdeb bootstrap --listen 127.0.0.1:0 --state-dir D --no-lan`: a DHT-only node.
    `.dht` is its "HOST:PORT" (from addresses.json, key "dht")."""

    def __init__(self, state_dir: Path, *, extra_args: Sequence[str] = ()) -> None:
        super().__init__(state_dir, (), extra_args=extra_args, no_dht=False)

    @property
    def argv(self) -> tuple[str, ...]:
        argv = [*self.command_prefix, *self.command, "bootstrap", "--listen", "127.0.0.1:0"]
        argv += ["--state-dir", str(self.state_dir), "--no-lan"]
        return (*argv, *self.extra_args)

    @property
    def dht(self) -> str:
        return self.addresses.peer


class DaemonFactory:
    """Start daemons for a test, each with its own state dir under `base` unless one is given;
    all are stopped at teardown (the `dhtdeb_daemon` fixture)."""

    def __init__(self, base: Path, default_keyrings: Sequence[Path]) -> None:
        self.base = base
        self.default_keyrings = tuple(default_keyrings)
        self.daemons: list[DaemonProcess] = []

    def __call__(
        self,
        *,
        state_dir: Path | None = None,
        keyrings: Sequence[Path] | None = None,
        extra_args: Sequence[str] = (),
        start: bool = True,
        command: Sequence[str] | None = None,
        no_dht: bool = True,
    ) -> DaemonProcess:
        state_dir = state_dir or self.base / f"daemon-{len(self.daemons) + 1}"
        daemon = DaemonProcess(
            state_dir,
            self.default_keyrings if keyrings is None else keyrings,
            extra_args=extra_args,
            no_dht=no_dht,
            command=command,
        )
        self.daemons.append(daemon)
        return daemon.start() if start else daemon

    def stop_all(self) -> None:
        for daemon in reversed(self.daemons):
            daemon.stop()
