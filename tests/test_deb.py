"""The .deb as an admin gets it: `make deb` builds dist/dhtdeb_<version>_<arch>.deb (make test
builds it before running the suite), lintian finds no error in it, and it installs with dpkg into a
throwaway root, where the daemon it brings serves real apt, and from which it purges cleanly.

The throwaway root is an overlay of this machine's / (every write lands in the test's own upper
directory; the machine's files are never touched) entered with chroot inside a network namespace of
its own, so the daemon runs exactly as the unit starts it: `/usr/bin/dhtdeb serve --state-dir
/var/lib/dhtdeb`, the shipped /etc/dhtdeb/dhtdeb.toml, default ports, $NOTIFY_SOCKET for READY=1.
apt in that root uses the package's apt.conf.d part and detect program: through dhtdeb while it
runs, straight to the mirror while it is stopped and after it is purged. The mirror is a real HTTP
server bound inside the namespace. Needs root (mount, chroot, ip netns), like the fleet tests.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from fleet.netns import Namespace, Tag, require_root
from support.archive import SignedArchive
from support.notify import NotifySocket

REPO = Path(__file__).resolve().parent.parent
PROXY_URL = "http://127.0.0.1:9977"  # the defaults: nothing on the command line sets them
SNIPPET = Path("etc/apt/apt.conf.d/99dhtdeb-proxy")
DETECT = "/usr/libexec/dhtdeb/apt-proxy-detect"
COMMAND_TIMEOUT = 300.0  # dpkg compiles the bundled environment's byte code
DAEMON_START = 60.0


def _text(argv: Sequence[str]) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True).stdout.strip()


def built_deb() -> Path:
    """The package `make deb` built for this tree's debian/changelog version."""
    version = _text(["dpkg-parsechangelog", "-l", str(REPO / "debian/changelog"), "-S", "Version"])
    arch = _text(["dpkg", "--print-architecture"])
    path = REPO / "dist" / f"dhtdeb_{version}_{arch}.deb"
    if not path.is_file():
        pytest.fail(f"{path} is missing: `make deb` builds it (`make test` does so first)")
    return path


@dataclass
class ThrowawayRoot:
    """This machine's / under an overlay whose upper layer is the test's; commands run in it
    with chroot inside `namespace`."""

    path: Path
    namespace: Namespace

    def argv(self, argv: Sequence[str]) -> list[str]:
        return [*self.namespace.exec_prefix, "chroot", str(self.path), *argv]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C.UTF-8"}
        env["DEBIAN_FRONTEND"] = "noninteractive"
        result = subprocess.run(
            self.argv(argv),
            capture_output=True,
            text=True,
            env=env,
            cwd="/",
            timeout=COMMAND_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"$ {' '.join(argv)}\n[exit {result.returncode}]\n{result.stdout}{result.stderr}"
            )
        return result

    def file(self, relative: str | Path) -> Path:
        return self.path / relative


def _mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def throwaway_root(base: Path) -> Iterator[ThrowawayRoot]:
    require_root()
    upper, work, merged = base / "upper", base / "work", base / "root"
    for directory in (upper, work, merged):
        directory.mkdir(parents=True)
    namespace = Namespace.create(Tag.new().netns("deb"))
    mounted: list[Path] = []
    try:
        _mount("-t", "overlay", "overlay", "-o", f"lowerdir=/,upperdir={upper},workdir={work}",
               str(merged))  # fmt: skip
        mounted.append(merged)
        # Private: nothing mounted below propagates to (or is unmounted from) the machine's tree.
        _mount("--make-private", str(merged))
        _mount("-t", "proc", "proc", str(merged / "proc"))
        mounted.append(merged / "proc")
        _mount("--make-private", str(merged / "proc"))
        # /dev is a mount of its own on the machine: the overlay shows the empty directory below.
        # Device nodes in the upper layer rather than a bind of the machine's /dev.
        for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7),
                                   ("random", 1, 8), ("urandom", 1, 9)):  # fmt: skip
            node = merged / "dev" / name
            if not node.exists():
                os.mknod(node, 0o666 | 0o020000, os.makedev(major, minor))
                node.chmod(0o666)
        for directory in ("run", "tmp", "var/tmp"):
            (merged / directory).mkdir(parents=True, exist_ok=True)
            (merged / directory).chmod(0o1777 if "tmp" in directory else 0o755)
        yield ThrowawayRoot(merged, namespace)
    finally:
        namespace.delete()  # kills what still runs in it (the daemon after a failure)
        for mount in reversed(mounted):
            subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)


@contextlib.contextmanager
def mirror_in(namespace: Namespace, root: Path) -> Iterator[str]:
    """A real HTTP server of the archive tree, its socket bound inside the namespace."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = namespace.call(lambda: http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler))
    thread = threading.Thread(target=server.serve_forever, name="deb-test-mirror", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []  # one test at a time

    def log_message(self, format: str, *args: object) -> None:
        _QuietHandler.requests.append(self.path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _point_apt_at(root: ThrowawayRoot, archive: SignedArchive, mirror: str) -> None:
    """Only the test archive as source (the machine's sources are whited out in the overlay), and
    its key in trusted.gpg.d, where both apt and dhtdeb's default keyrings find it."""
    sources = root.file("etc/apt/sources.list")
    sources.unlink(missing_ok=True)
    sources_d = root.file("etc/apt/sources.list.d")
    shutil.rmtree(sources_d, ignore_errors=True)
    sources_d.mkdir()
    (sources_d / "dhtdeb-test.list").write_text(
        f"deb {mirror}/ {archive.suite} {archive.component}\n"
    )
    shutil.copy(archive.keyring, root.file("etc/apt/trusted.gpg.d/dhtdeb-test.gpg"))
    root.file("etc/apt/trusted.gpg.d/dhtdeb-test.gpg").chmod(0o644)


def _apt_update(root: ThrowawayRoot) -> str:
    done = root.run("apt-get", "update", "--error-on=any", "-o", "Debug::Acquire::http=false")
    return done.stdout + done.stderr


def _start_daemon(root: ThrowawayRoot, log: Path) -> subprocess.Popen[bytes]:
    """As the unit starts it: its ExecStart, notified readiness."""
    notify = NotifySocket(str(root.file("run/dhtdeb-test-notify")))
    unit = root.file("lib/systemd/system/dhtdeb.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = exec_start.removeprefix("ExecStart=").split()
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "NOTIFY_SOCKET": "/run/dhtdeb-test-notify",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            root.argv(argv), stdout=out, stderr=subprocess.STDOUT, env=env, cwd="/"
        )
    try:
        messages = notify.receive_until("READY", time.monotonic() + DAEMON_START)
    except AssertionError:
        process.kill()
        process.wait()
        raise AssertionError(f"no READY=1 from the packaged daemon:\n{log.read_text()}") from None
    finally:
        notify.close()
    assert messages[-1]["READY"] == "1"
    return process


def _stop_daemon(process: subprocess.Popen[bytes], log: Path) -> None:
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=30)
    assert code == 0, f"the packaged daemon exited {code} on SIGTERM:\n{log.read_text()}"


def test_lintian_reports_no_error() -> None:
    deb = built_deb()
    done = subprocess.run(
        ["lintian", "--fail-on", "error", "--no-tag-display-limit", str(deb)],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    tags = [line for line in done.stdout.splitlines() if line[:2] in ("E:", "W:", "I:")]
    print("\n".join(tags))
    assert done.returncode == 0, f"lintian:\n{done.stdout}{done.stderr}"
    assert not [tag for tag in tags if tag.startswith("E:")]


def test_installed_package_serves_apt_and_purges_cleanly(
    tmp_path: Path, signed_archive: SignedArchive
) -> None:
    deb = built_deb()
    package = signed_archive.small_packages[0]
    log = tmp_path / "daemon.log"
    with (
        throwaway_root(tmp_path / "throwaway") as root,
        mirror_in(root.namespace, signed_archive.root) as mirror,
    ):
        _point_apt_at(root, signed_archive, mirror)
        shutil.copy(deb, root.file("tmp") / deb.name)
        root.run("dpkg", "--purge", "dhtdeb")  # a clean slate, also where dhtdeb is installed

        installed = root.run("dpkg", "-i", f"/tmp/{deb.name}")
        output = installed.stdout + installed.stderr
        # postinst: apt is pointed at the package's detect program, which answers DIRECT now.
        assert f'Proxy-Auto-Detect "{DETECT}";' in root.file(SNIPPET).read_text(), output
        assert "The detect program answers DIRECT" in output, output
        assert root.file("lib/systemd/system/dhtdeb.service").is_file()
        # Enabled: the link's target is absolute, so from out here only is_symlink can see it.
        assert root.file("etc/systemd/system/multi-user.target.wants/dhtdeb.service").is_symlink()
        assert "dhtdeb.toml" in root.run("dpkg-query", "-W", "-f=${Conffiles}", "dhtdeb").stdout
        assert root.run("dhtdeb", "version").stdout.strip() == deb.name.split("_")[1]
        assert root.file("usr/share/man/man1/dhtdeb.1.gz").is_file()  # from the CLI's help
        shown = root.run("dhtdeb", "config", "show").stdout
        assert 'listen = "127.0.0.1:9977"' in shown and "# default" in shown, shown

        # The daemon is not running: apt fetches straight from the mirror.
        _QuietHandler.requests.clear()
        _apt_update(root)
        assert root.run(DETECT, f"{mirror}/").stdout == "DIRECT\n"
        assert any(path.endswith("/InRelease") for path in _QuietHandler.requests)

        process = _start_daemon(root, log)
        try:
            assert root.run(DETECT, f"{mirror}/").stdout == f"{PROXY_URL}\n"
            _apt_update(root)
            root.run("apt-get", "clean")
            fetched = root.run("sh", "-c", f"cd /root && apt-get download {package.name}")
            assert fetched.returncode == 0
            downloaded = root.file("root") / package.download_name
            assert _sha256(downloaded) == package.sha256
            status = json.loads(root.run("dhtdeb", "status", "--json").stdout)
            # apt's lists were current (its direct update above): the daemon learned the
            # Packages file on its own, and the .deb came through verified and stored.
            assert status["requests"]["passed_through"] == 0, status
            assert status["requests"]["from_mirror"] >= 2, status
            assert status["bytes"]["from_mirror"] >= package.size, status
            assert status["cache"]["files"] >= 1, status
        finally:
            _stop_daemon(process, log)
        # Stopped: apt goes direct again, with no error.
        assert root.run(DETECT, f"{mirror}/").stdout == "DIRECT\n"
        _apt_update(root)

        purged = root.run("dpkg", "--purge", "dhtdeb")
        # prerm took apt's setting back before the detect program went; postrm removed the state.
        assert not root.file(SNIPPET).exists(), purged.stdout + purged.stderr
        for gone in ("usr/lib/dhtdeb", "usr/bin/dhtdeb", "etc/dhtdeb", "var/lib/dhtdeb", DETECT):
            assert not root.file(gone.lstrip("/")).exists(), f"{gone} left after purge"
        _apt_update(root)
