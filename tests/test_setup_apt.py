"""`dhtdeb setup-apt`: real apt goes through the daemon while it runs and straight to the mirror
while it is stopped, with nothing but the snippet and its detect program in apt's configuration."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.apt import AptClient, AptClientFactory
from support.archive import DebPackage, SignedArchive
from support.daemon import DaemonFactory, DaemonProcess
from support.mirror import Mirror

SNIPPET = "99dhtdeb-proxy"


def _setup_apt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dhtdeb", "setup-apt", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _detect(program: Path, url: str) -> str:
    done = subprocess.run([str(program), url], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0 and not done.stderr, done
    return done.stdout


def _fetch(apt: AptClient, package: DebPackage, dest: Path) -> None:
    apt.update().check()
    apt.download([package.name], dest).check()
    data = (dest / package.download_name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == package.sha256


def _assert_went_through(daemon: DaemonProcess, package: DebPackage) -> None:
    status = daemon.status()
    assert status["requests"]["from_mirror"] + status["requests"]["cache_hits"] >= 1, status
    assert status["bytes"]["to_apt"] >= package.size, status


def test_apt_uses_the_daemon_while_it_runs_and_the_mirror_while_it_does_not(
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    dhtdeb_daemon: DaemonFactory,
    tmp_path: Path,
) -> None:
    daemon = dhtdeb_daemon()
    apt = apt_client(signed_archive, mirror)  # no proxy of its own: only what setup-apt writes
    conf_dir = apt.workdir / "apt.conf.d"
    program = tmp_path / "bin" / "apt-proxy-detect"
    package = signed_archive.packages[0]

    done = _setup_apt(
        "--apt-conf-dir", str(conf_dir), "--url", daemon.proxy_url, "--detect-program", str(program)
    )
    assert done.returncode == 0, done.stderr
    snippet = conf_dir / SNIPPET
    assert snippet.read_text().endswith(f'Acquire::http::Proxy-Auto-Detect "{program}";\n')
    assert f"wrote {snippet}" in done.stdout and "https:// sources are untouched" in done.stdout
    assert f"answers {daemon.proxy_url}" in done.stdout
    again = _setup_apt(
        "--apt-conf-dir", str(conf_dir), "--url", daemon.proxy_url, "--detect-program", str(program)
    )
    assert again.returncode == 0 and f"{snippet} is already in place" in again.stdout

    # The program's one line: the proxy for http, DIRECT for https and for dhtdeb's own address.
    assert _detect(program, f"{mirror.url}/dists/") == daemon.proxy_url + "\n"
    assert _detect(program, "https://mirror.example/debian/") == "DIRECT\n"
    assert _detect(program, f"{daemon.proxy_url}/{mirror.host_port}/debian/") == "DIRECT\n"

    _fetch(apt, package, tmp_path / "through")
    _assert_went_through(daemon, package)

    address = daemon.proxy
    daemon.stop()
    assert _detect(program, f"{mirror.url}/dists/") == "DIRECT\n"
    mirror.reset_counters()
    _fetch(apt, package, tmp_path / "direct")
    assert any(r.path == package.filename for r in mirror.requests), mirror.requests

    # The daemon back on its address (its state kept): the same snippet sends apt through it.
    restarted = dhtdeb_daemon(state_dir=daemon.state_dir, extra_args=("--proxy", address))
    assert restarted.proxy == address
    _fetch(apt, package, tmp_path / "through-again")
    _assert_went_through(restarted, package)

    undone = _setup_apt("--undo", "--apt-conf-dir", str(conf_dir))
    assert undone.returncode == 0, undone.stderr
    assert f"removed {snippet}" in undone.stdout and f"removed {program}" in undone.stdout
    assert not snippet.exists() and not program.exists()
    undone = _setup_apt("--undo", "--apt-conf-dir", str(conf_dir), "--detect-program", str(program))
    assert undone.returncode == 0 and "is not there" in undone.stdout


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    program = str(tmp_path / "bin" / "detect")
    missing = _setup_apt("--apt-conf-dir", str(tmp_path / "missing"), "--detect-program", program)
    assert missing.returncode == 2 and missing.stderr.startswith("dhtdeb: ")
    assert "is not a directory" in missing.stderr and "Traceback" not in missing.stderr
    conf_dir = tmp_path / "apt.conf.d"
    conf_dir.mkdir()
    bad_url = _setup_apt("--apt-conf-dir", str(conf_dir), "--url", "https://127.0.0.1:1")
    assert bad_url.returncode == 2 and "bad --url" in bad_url.stderr
    foreign = conf_dir / SNIPPET
    foreign.write_text('Acquire::http::Proxy "http://elsewhere:3128";\n')
    refused = _setup_apt("--undo", "--apt-conf-dir", str(conf_dir), "--detect-program", program)
    assert refused.returncode == 2 and "not written by dhtdeb" in refused.stderr
    assert foreign.exists()


def test_read_only_conf_dir_is_a_dhtdeb_error(tmp_path: Path) -> None:
    """A directory setup-apt cannot write: one `dhtdeb:` line, exit 2, no traceback. As root
    (CI), permissions do not stop writes, so the directory is a read-only tmpfs."""
    conf_dir = tmp_path / "apt.conf.d"
    conf_dir.mkdir(mode=0o555)
    mounted = os.geteuid() == 0
    if mounted:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(conf_dir)], check=True
        )
    try:
        done = _setup_apt(
            "--apt-conf-dir", str(conf_dir), "--detect-program", str(tmp_path / "bin" / "detect")
        )
    finally:
        if mounted:
            subprocess.run(["umount", str(conf_dir)], check=True)
    assert done.returncode == 2 and "cannot write" in done.stderr and "Traceback" not in done.stderr


def test_the_packages_detect_program_is_used_as_it_is_and_kept_on_undo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The .deb ships the detect program (dpkg owns it): setup-apt names it without rewriting it,
    --undo leaves it, and another --url cannot be written into it."""
    from dhtdeb import setup_apt
    from dhtdeb.errors import ConfigError

    packaged = tmp_path / "libexec" / "apt-proxy-detect"
    conf_dir = tmp_path / "apt.conf.d"
    conf_dir.mkdir()
    assert setup_apt.default_detect_program(setup_apt.DEFAULT_URL, packaged) == (
        setup_apt.DEFAULT_DETECT_PROGRAM
    ), "not installed: setup-apt writes its own"
    packaged.parent.mkdir()
    shipped = Path(setup_apt.__file__).with_name("apt_proxy_detect.py").read_text()
    packaged.write_text(shipped)
    packaged.chmod(0o755)
    monkeypatch.setattr(setup_apt, "PACKAGED_DETECT_PROGRAM", packaged)
    assert setup_apt.default_detect_program("http://127.0.0.1:9977/", packaged) == packaged
    assert setup_apt.default_detect_program("http://10.0.0.1:9977", packaged) == (
        setup_apt.DEFAULT_DETECT_PROGRAM
    )

    outcome = setup_apt.setup(conf_dir, setup_apt.DEFAULT_URL, packaged)
    assert [c.action for c in outcome.changes] == ["packaged", "wrote"]
    assert packaged.read_text() == shipped
    assert f'Proxy-Auto-Detect "{packaged}";' in (conf_dir / SNIPPET).read_text()
    assert outcome.answer in ("DIRECT", setup_apt.DEFAULT_URL)  # it ran, and apt could use it

    with pytest.raises(ConfigError, match="another --url"):
        setup_apt.setup(conf_dir, "http://10.0.0.1:9977", packaged)
    assert packaged.read_text() == shipped

    undone = setup_apt.undo(conf_dir, setup_apt.DEFAULT_DETECT_PROGRAM)
    assert not (conf_dir / SNIPPET).exists()
    assert ("packaged", packaged) in [(c.action, c.path) for c in undone.changes]
    assert packaged.read_text() == shipped
