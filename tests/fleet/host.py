"""One machine of the fleet: a network namespace with its own address, its dhtdeb daemon on the
default ports, and real apt-get clients that use it.

Owns: the host's directory (daemon state dir and log, apt working directories), the daemon
process (`dhtdeb serve` with no --proxy/--peer, so 127.0.0.1:9977 and 0.0.0.0:9978 as deployed,
run under `ip netns exec`), isolated apt clients (HTTP-proxy mode through 127.0.0.1:9977, or
direct to the mirror), and HTTP requests made from inside the namespace (the daemon's
/status.json: the test process's own 127.0.0.1 is a different machine).
Trusts: the daemon's addresses.json contract (tests/support/daemon.py) and the archive's keys;
which of the three keys this host knows is the host's configuration (`keys`).
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from support.apt import DEFAULT_TIMEOUT, AptClient, AptResult, ProxyMode, RunningApt
from support.daemon import START_TIMEOUT, DaemonProcess

from .archive import ArchivePackage, FleetArchive
from .mirror_host import MirrorHost
from .netns import Namespace

PROXY = "127.0.0.1:9977"
PEER_PORT = 9978
_POLL = 0.05
# Requests the harness makes must never go through an environment proxy.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class HostDaemon(DaemonProcess):
    """A DaemonProcess whose HTTP requests (`get`, `status`) are made inside its namespace."""

    def __init__(self, namespace: Namespace, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, command_prefix=namespace.exec_prefix, **kwargs)
        self.namespace = namespace

    def get(self, path: str, timeout: float = 10.0) -> bytes:
        url = f"{self.proxy_url}{path}"

        def fetch() -> bytes:
            with _DIRECT.open(url, timeout=timeout) as response:
                body: bytes = response.read()
                return body

        return self.namespace.call(fetch)


class FleetApt(AptClient):
    """An isolated apt-get running inside a host, with the fleet archive in its sources.

    Like a real machine it fetches Translation-en during `update` (languages="en"); pass
    languages="none" for the leaner configuration of tests/support/apt.py."""

    def __init__(
        self,
        workdir: Path,
        *,
        host: FleetHost,
        keyring: Path,
        mode: ProxyMode,
        languages: str = "en",
        options: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.archive = host.archive
        super().__init__(
            workdir,
            mirror_url=host.mirror.url,
            suite=self.archive.suite,
            component=self.archive.component,
            keyring=keyring,
            arch=self.archive.arch,
            mode=mode,
            proxy=PROXY if mode is not ProxyMode.DIRECT else None,
            options={"Acquire::Languages": languages, **(options or {})},
            command_prefix=host.namespace.exec_prefix,
        )

    @property
    def downloads_dir(self) -> Path:
        """Where `download` puts files unless told otherwise."""
        return self.workdir / "downloads"

    def download(
        self,
        names: Sequence[str],
        dest_dir: Path | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        extra: Sequence[str] = (),
    ) -> AptResult:
        """`apt-get download NAMES` into `dest_dir` (default `downloads_dir`)."""
        return super().download(names, dest_dir or self.downloads_dir, timeout=timeout, extra=extra)

    def set_installed(self, packages: Iterable[ArchivePackage] | None = None) -> None:
        """Write a dpkg status file that lists `packages` (default: the whole archive) as
        installed at an older version."""
        (self.workdir / "status").write_text(self.archive.older_status(packages))

    def start_upgrade(
        self, packages: Iterable[ArchivePackage] | None = None, *, extra: Sequence[str] = ()
    ) -> RunningApt:
        """`upgrade` in the background."""
        self.set_installed(packages)
        return self.start(["--download-only", "-y", *extra, "upgrade"])

    def upgrade(
        self,
        packages: Iterable[ArchivePackage] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        extra: Sequence[str] = (),
    ) -> AptResult:
        """`apt-get --download-only -y upgrade` with `packages` (default: all) installed at an
        older version: apt's real batch, hundreds of files pipelined 10 per connection. The
        files land in `archives_dir`."""
        return self.start_upgrade(packages, extra=extra).wait(timeout)

    def check_downloaded(
        self, expected: Iterable[ArchivePackage], directory: Path | None = None
    ) -> None:
        """AssertionError unless `directory` (default `downloads_dir`) holds exactly the archive's
        files for `expected`."""
        self.archive.check_files(directory or self.downloads_dir, expected)

    def check_upgraded(self, expected: Iterable[ArchivePackage] | None = None) -> None:
        """AssertionError unless apt's archives/ holds exactly the archive's files for
        `expected` (default: the whole archive)."""
        packages = self.archive.packages if expected is None else expected
        self.archive.check_files(self.archives_dir, packages)


class FleetHost:
    """Host number `number` (1-based) of a fleet, at `address`, in `namespace`."""

    def __init__(
        self,
        *,
        number: int,
        namespace: Namespace,
        address: str,
        workdir: Path,
        archive: FleetArchive,
        mirror: MirrorHost,
        keys: Sequence[str] | None = None,
    ) -> None:
        self.number = number
        self.name = f"h{number}"
        self.namespace = namespace
        self.address = address
        self.workdir = workdir
        self.archive = archive
        self.mirror = mirror
        self.keys = tuple(keys) if keys is not None else archive.key_names
        archive.signing_keys(self.keys)  # unknown names fail here, not in the daemon
        self.daemon: HostDaemon | None = None
        self._apt_count = 0
        workdir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"FleetHost({self.name}, {self.address})"

    @property
    def peer_address(self) -> str:
        """Where other hosts reach this host's peer server and DHT ("10.77.0.11:9978")."""
        return f"{self.address}:{PEER_PORT}"

    # --- the daemon -------------------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def daemon_log(self) -> Path:
        return self.state_dir / "daemon.log"

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.daemon_log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no daemon log)"
        return "\n".join(text.splitlines()[-lines:])

    def start_daemon(
        self,
        *,
        bootstrap: Iterable[FleetHost | str] = (),
        extra_args: Sequence[str] = (),
        dht: bool = True,
        keyrings: Sequence[Path] | None = None,
        timeout: float = START_TIMEOUT,
    ) -> HostDaemon:
        """Start `dhtdeb serve` on the default addresses, trusting this host's keys, with its
        state dir under the host's directory (kept across restarts). `bootstrap` hosts (or
        "HOST:PORT" strings) become `--bootstrap` options. `keyrings` replaces the host's
        archive keys (an empty sequence: no --keyring, the daemon's own defaults)."""
        if self.daemon is not None and self.daemon.running:
            raise RuntimeError(f"{self.name}: daemon already running")
        args: list[str] = []
        for node in bootstrap:
            args += ["--bootstrap", node.peer_address if isinstance(node, FleetHost) else node]
        self.daemon = HostDaemon(
            self.namespace,
            self.state_dir,
            self.archive.keyring_files(self.keys) if keyrings is None else keyrings,
            extra_args=(*args, *extra_args),
            no_dht=not dht,
            default_addresses=True,
        )
        self.daemon.start(timeout)
        return self.daemon

    def _running_daemon(self) -> HostDaemon:
        if self.daemon is None:
            raise RuntimeError(f"{self.name}: no daemon started")
        return self.daemon

    def stop_daemon(self) -> int | None:
        """SIGTERM, then wait (SIGKILL if it hangs). Returns the exit code."""
        return self.daemon.stop() if self.daemon is not None else None

    def kill_daemon(self) -> int | None:
        """SIGKILL: a crash or a power cut."""
        return self.daemon.kill() if self.daemon is not None else None

    def restart_daemon(self, timeout: float = START_TIMEOUT) -> HostDaemon:
        """Stop and start again with the same state dir and arguments."""
        daemon = self._running_daemon()
        daemon.restart(timeout)
        return daemon

    def status(self) -> dict[str, Any]:
        """The daemon's /status.json, fetched from inside this host."""
        return self._running_daemon().status()

    def wait_for_status(
        self,
        condition: Callable[[dict[str, Any]], bool],
        timeout: float = 30.0,
        what: str = "status condition",
    ) -> dict[str, Any]:
        """Poll /status.json until `condition` holds; returns that status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if condition(status):
                return status
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.name}: {what} not reached in {timeout}s: {status}")
            time.sleep(_POLL)  # polling the daemon's state, with a deadline

    # --- apt --------------------------------------------------------------------------------------

    def apt(
        self,
        *,
        mode: ProxyMode = ProxyMode.HTTP_PROXY,
        keys: Sequence[str] | None = None,
        languages: str = "en",
        options: dict[str, str] | None = None,
    ) -> FleetApt:
        """A fresh isolated apt client in this host (its own lists, cache and status): through
        the host's daemon (HTTP-proxy mode, the default) or DIRECT to the mirror. `keys`
        (default: the host's) are the keys of its signed-by keyring."""
        if mode is ProxyMode.URL_PREFIX:
            raise ValueError("fleet hosts use apt as deployed: HTTP_PROXY or DIRECT")
        self._apt_count += 1
        workdir = self.workdir / f"apt-{self._apt_count}"
        workdir.mkdir(parents=True)
        return FleetApt(
            workdir,
            host=self,
            keyring=self.archive.keyring(self.keys if keys is None else keys),
            mode=mode,
            languages=languages,
            options=options,
        )

    def apt_for(
        self,
        mirror_url: str,
        *,
        suite: str,
        keyring: Path,
        component: str = "main",
        mode: ProxyMode = ProxyMode.HTTP_PROXY,
        options: dict[str, str] | None = None,
    ) -> AptClient:
        """A fresh isolated apt client in this host for another repository (e.g. a real mirror
        reached through the fleet's uplink)."""
        if mode is ProxyMode.URL_PREFIX:
            raise ValueError("fleet hosts use apt as deployed: HTTP_PROXY or DIRECT")
        self._apt_count += 1
        workdir = self.workdir / f"apt-{self._apt_count}"
        workdir.mkdir(parents=True)
        return AptClient(
            workdir,
            mirror_url=mirror_url,
            suite=suite,
            component=component,
            keyring=keyring,
            mode=mode,
            proxy=PROXY if mode is not ProxyMode.DIRECT else None,
            options=options,
            command_prefix=self.namespace.exec_prefix,
        )

    # --- running things in the host ---------------------------------------------------------------

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return self.namespace.run(argv, check=check, timeout=timeout)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start a process in this host (text mode; pass stdout=subprocess.PIPE etc.)."""
        return subprocess.Popen([*self.namespace.exec_prefix, *argv], text=True, **kwargs)

    def python(
        self, code: str, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a Python snippet in this host (isolated mode: no site-packages of the venv)."""
        return self.run([sys.executable, "-I", "-c", code, *args], check=check, timeout=timeout)

    def http_get(
        self, url: str, headers: dict[str, str] | None = None, timeout: float = 30.0
    ) -> tuple[int, bytes]:
        """GET `url` from inside this host, never through a proxy: (status, body)."""
        request = urllib.request.Request(url, headers=headers or {})

        def fetch() -> tuple[int, bytes]:
            try:
                with _DIRECT.open(request, timeout=timeout) as response:
                    return int(response.status), response.read()
            except urllib.error.HTTPError as error:
                with error:
                    return error.code, error.read()

        return self.namespace.call(fetch)
