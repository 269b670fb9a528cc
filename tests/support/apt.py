"""The real apt-get, fully isolated from the machine's apt configuration, for tests and benchmarks.

Owns: a private APT_CONFIG (no /etc/apt parts, its own sources, state, cache, empty dpkg status),
and the way apt reaches the mirror: directly, through an HTTP proxy (`Acquire::http::Proxy`,
absolute-form requests) or through a URL-prefix proxy (`http://PROXY/<mirror host:port>/<path>`).
Trusts: only the keyring given as `signed-by`; never the system's trusted.gpg(.d).
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .archive import SignedArchive
from .mirror import Mirror

DEFAULT_TIMEOUT = 120.0
_PROXY_ENV = ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy")


class ProxyMode(enum.Enum):
    DIRECT = "direct"
    # Acquire::http::Proxy "http://PROXY"; sources name the mirror itself.
    HTTP_PROXY = "http-proxy"
    # Sources name http://PROXY/<mirror host:port>/<mirror path>.
    URL_PREFIX = "url-prefix"


class AptFailed(AssertionError):
    """apt-get exited non-zero where the test expected success."""


@dataclass(frozen=True, slots=True)
class AptResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def output(self) -> str:
        return f"$ {' '.join(self.argv)}\n[exit {self.returncode}]\n{self.stdout}{self.stderr}"

    def check(self) -> AptResult:
        if not self.ok:
            raise AptFailed(self.output)
        return self


class RunningApt:
    """An apt-get process in its own session (so it can be killed with its methods)."""

    def __init__(self, argv: tuple[str, ...], *, cwd: Path, env: dict[str, str]) -> None:
        self.argv = argv
        self._started = time.monotonic()
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> AptResult:
        """Wait for apt-get to exit. On timeout apt and its methods are killed and the result has
        returncode -SIGKILL with whatever was printed so far."""
        note = ""
        try:
            stdout, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            stdout, stderr = self.process.communicate()
            note = f"\n[harness: apt-get killed after {timeout}s]\n"
        return AptResult(
            argv=self.argv,
            returncode=self.process.returncode,
            stdout=stdout,
            stderr=stderr + note,
            seconds=time.monotonic() - self._started,
        )

    def kill(self) -> None:
        """SIGKILL apt-get and its methods (the whole process group); `wait` collects the result."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)


def _quote(value: str) -> str:
    if '"' in value or "\n" in value:
        raise ValueError(f"cannot put {value!r} into apt.conf")
    return f'"{value}"'


class AptClient:
    """apt-get with its own configuration under `workdir`.

    `mirror_url` is the archive base URL as the mirror serves it (http://127.0.0.1:PORT/debian);
    `proxy` is "HOST:PORT" of the proxy for the two proxy modes; `command_prefix` goes in front
    of every apt-get command line (the fleet harness runs apt in a network namespace with
    `("ip", "netns", "exec", NS)`)."""

    def __init__(
        self,
        workdir: Path,
        *,
        mirror_url: str,
        suite: str,
        component: str,
        keyring: Path,
        arch: str = "amd64",
        mode: ProxyMode = ProxyMode.DIRECT,
        proxy: str | None = None,
        options: dict[str, str] | None = None,
        command_prefix: Sequence[str] = (),
    ) -> None:
        if mode is not ProxyMode.DIRECT and not proxy:
            raise ValueError(f"{mode.value} needs a proxy HOST:PORT")
        if not mirror_url.startswith("http://"):
            raise ValueError(f"mirror_url must be http://…, got {mirror_url!r}")
        self.workdir = workdir
        self.mirror_url = mirror_url.rstrip("/")
        self.suite = suite
        self.component = component
        self.keyring = keyring
        self.arch = arch
        self.mode = mode
        self.proxy = proxy
        self.config_path = workdir / "apt.conf"
        self.command_prefix = tuple(command_prefix)
        self._extra_options = dict(options or {})
        self._write_config()

    def through(self, mode: ProxyMode, proxy: str | None) -> AptClient:
        """The same apt (workdir: lists, cache and state kept) reaching the mirror another way."""
        return AptClient(
            self.workdir,
            mirror_url=self.mirror_url,
            suite=self.suite,
            component=self.component,
            keyring=self.keyring,
            arch=self.arch,
            mode=mode,
            proxy=proxy,
            options=self._extra_options,
            command_prefix=self.command_prefix,
        )

    # --- layout -----------------------------------------------------------------------------------

    @property
    def source_uri(self) -> str:
        if self.mode is ProxyMode.URL_PREFIX:
            return f"http://{self.proxy}/{self.mirror_url.removeprefix('http://')}"
        return self.mirror_url

    @property
    def source_line(self) -> str:
        return f"deb [signed-by={self.keyring}] {self.source_uri} {self.suite} {self.component}"

    @property
    def lists_dir(self) -> Path:
        return self.workdir / "state" / "lists"

    @property
    def archives_dir(self) -> Path:
        return self.workdir / "cache" / "archives"

    def _write_config(self) -> None:
        w = self.workdir
        for directory in (
            w / "apt.conf.d",
            w / "preferences.d",
            w / "sources.list.d",
            w / "trusted.gpg.d",
            w / "state" / "lists" / "partial",
            w / "cache" / "archives" / "partial",
            w / "log",
        ):
            directory.mkdir(parents=True, exist_ok=True)
        (w / "status").touch()
        (w / "sources.list").write_text(self.source_line + "\n")
        options: dict[str, str] = {
            "Dir::Etc::Parts": str(w / "apt.conf.d"),
            "Dir::Etc::main": str(w / "apt.conf.main-unused"),
            "Dir::Etc::Preferences": str(w / "preferences"),
            "Dir::Etc::PreferencesParts": str(w / "preferences.d"),
            "Dir::Etc::sourcelist": str(w / "sources.list"),
            "Dir::Etc::sourceparts": str(w / "sources.list.d"),
            "Dir::Etc::Trusted": str(w / "trusted.gpg"),
            "Dir::Etc::TrustedParts": str(w / "trusted.gpg.d"),
            "Dir::State": str(w / "state"),
            "Dir::State::Lists": str(w / "state" / "lists"),
            "Dir::State::status": str(w / "status"),
            "Dir::Cache": str(w / "cache"),
            "Dir::Cache::Archives": str(w / "cache" / "archives"),
            "Dir::Log": str(w / "log"),
            "Debug::NoLocking": "true",
            "APT::Sandbox::User": "root",
            "APT::Architecture": self.arch,
            "APT::Install-Recommends": "false",
            "APT::Install-Suggests": "false",
            "APT::Get::Show-Versions": "true",
            "Acquire::Retries": "0",
            "Acquire::Languages": "none",
            "Acquire::PDiffs": "false",
            "Acquire::http::Timeout": "30",
        }
        if self.mode is ProxyMode.HTTP_PROXY:
            options["Acquire::http::Proxy"] = f"http://{self.proxy}"
        options.update(self._extra_options)
        lines = [f"{key} {_quote(value)};" for key, value in options.items()]
        # A list option: only the one architecture, no foreign ones from the host's dpkg.
        lines.append(f"APT::Architectures {{ {_quote(self.arch)}; }};")
        self.config_path.write_text("\n".join(lines) + "\n")

    # --- running ----------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_ENV}
        env["APT_CONFIG"] = str(self.config_path)
        env["LC_ALL"] = "C.UTF-8"
        env["DEBIAN_FRONTEND"] = "noninteractive"
        return env

    def start(self, args: Sequence[str], *, cwd: Path | None = None) -> RunningApt:
        """Start `apt-get ARGS` in the background (e.g. to act while a download is under way)."""
        argv = (*self.command_prefix, "apt-get", *args)
        return RunningApt(argv, cwd=cwd or self.workdir, env=self.env())

    def run(
        self,
        args: Sequence[str],
        *,
        cwd: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> AptResult:
        """Run `apt-get ARGS` to completion (see `RunningApt.wait` for the timeout)."""
        return self.start(args, cwd=cwd).wait(timeout)

    def start_fetch(self, names: Sequence[str], *, extra: Sequence[str] = ()) -> RunningApt:
        """`fetch` in the background."""
        return self.start(["install", "-y", "--download-only", *extra, *names])

    def update(self, *, timeout: float = DEFAULT_TIMEOUT, extra: Sequence[str] = ()) -> AptResult:
        """`apt-get update --error-on=any`: without it apt exits 0 on a bad signature."""
        return self.run(["update", "--error-on=any", *extra], timeout=timeout)

    def download(
        self,
        names: Sequence[str],
        dest_dir: Path,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        extra: Sequence[str] = (),
    ) -> AptResult:
        """`apt-get download NAMES` into `dest_dir` (apt writes to its working directory)."""
        dest_dir.mkdir(parents=True, exist_ok=True)
        return self.run(["download", *extra, *names], cwd=dest_dir, timeout=timeout)

    def fetch(
        self,
        names: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        extra: Sequence[str] = (),
    ) -> AptResult:
        """`apt-get install --download-only`: files land in `archives_dir`, partial ones in
        `archives_dir/partial`, and a partial file is resumed with `Range: bytes=N-` + `If-Range`
        (`apt-get download` never resumes: it starts over in its working directory)."""
        return self.start_fetch(names, extra=extra).wait(timeout)

    def archive_file(self, download_name: str) -> Path:
        """Where `fetch` puts a complete file (`DebPackage.download_name`)."""
        return self.archives_dir / download_name

    def partial_file(self, download_name: str) -> Path:
        return self.archives_dir / "partial" / download_name

    def seed_partial(self, download_name: str, data: bytes, mtime: float) -> Path:
        """Leave a partial download for `fetch` to resume. apt sends the partial file's mtime as
        If-Range: after a dropped connection apt has set it to the server's Last-Modified; after
        apt itself was killed it is the time of the last write, which an exact If-Range check
        refuses (full 200 instead of 206)."""
        path = self.partial_file(download_name)
        path.write_bytes(data)
        os.utime(path, (mtime, mtime))
        return path


class AptClientFactory:
    """Isolated apt clients, each in its own directory under `base` (the `apt_client` fixture)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._count = 0

    def __call__(
        self,
        archive: SignedArchive,
        mirror: Mirror | str,
        *,
        mode: ProxyMode = ProxyMode.DIRECT,
        proxy: str | None = None,
        options: dict[str, str] | None = None,
    ) -> AptClient:
        self._count += 1
        workdir = self.base / f"apt-{self._count}"
        workdir.mkdir(parents=True)
        return AptClient(
            workdir,
            mirror_url=mirror.url if isinstance(mirror, Mirror) else mirror,
            suite=archive.suite,
            component=archive.component,
            keyring=archive.keyring,
            arch=archive.arch,
            mode=mode,
            proxy=proxy,
            options=options,
        )
