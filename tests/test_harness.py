"""The real-parts harness proves itself: real apt against the test mirror, with no dhtdeb involved.

If these fail, the end-to-end tests of dhtdeb mean nothing: the archive must be one apt accepts,
the attacks must be ones apt itself rejects, and the mirror must count and serve like a mirror.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import wait_until
from support.apt import AptClientFactory, AptResult, ProxyMode
from support.archive import (
    BIG_PAYLOAD_BYTES,
    PACKAGES_FILES,
    SignedArchive,
    prepend_unsigned_paragraph,
    reindex,
    resign,
    sha256_file,
    tamper_deb,
    tamper_packages,
    tampered_deb_bytes,
)
from support.daemon import DaemonFactory, DaemonFailed
from support.mirror import Mirror, MirrorFactory

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with _DIRECT.open(request, timeout=10) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def _gpgv(keyring: Path, signed: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["gpgv", "--keyring", str(keyring), str(signed)],
        capture_output=True,
        timeout=30,
        check=False,
    )


def _all_names(archive: SignedArchive) -> list[str]:
    return [p.name for p in archive.packages]


# --- the archive ----------------------------------------------------------------------------------


def test_archive_has_small_packages_one_big_and_by_hash_indexes(
    signed_archive: SignedArchive,
) -> None:
    archive = signed_archive
    assert len(archive.small_packages) >= 6
    assert archive.big.size >= 20 * 1024 * 1024 > BIG_PAYLOAD_BYTES - 1024 * 1024
    for package in archive.packages:
        path = archive.path(package.filename)
        assert path.stat().st_size == package.size
        assert sha256_file(path) == package.sha256
    release = (archive.dist_dir / "Release").read_text()
    assert "Acquire-By-Hash: yes" in release
    assert "SHA256:" in release and "SHA512:" not in release
    packages = (archive.binary_dir / "Packages").read_text()
    assert "\nMD5sum: " in packages and "\nSHA256: " in packages
    assert "\nSHA1: " not in packages and "\nSHA512: " not in packages
    for name in PACKAGES_FILES:
        digest = sha256_file(archive.binary_dir / name)
        assert f" {digest} " in release
        assert (archive.binary_dir / "by-hash" / "SHA256" / digest).is_file()


def test_archive_signatures_verify_only_with_the_archive_key(
    signed_archive: SignedArchive,
) -> None:
    archive = signed_archive
    assert _gpgv(archive.keyring, archive.dist_dir / "InRelease").returncode == 0
    detached = subprocess.run(
        [
            *("gpgv", "--keyring", str(archive.keyring)),
            *(str(archive.dist_dir / "Release.gpg"), str(archive.dist_dir / "Release")),
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert detached.returncode == 0, detached.stderr
    assert _gpgv(archive.unknown_key.keyring, archive.dist_dir / "InRelease").returncode != 0


# --- real apt, direct -----------------------------------------------------------------------------


def test_apt_updates_and_downloads_every_package_direct(
    signed_archive: SignedArchive, mirror: Mirror, apt_client: AptClientFactory, tmp_path: Path
) -> None:
    apt = apt_client(signed_archive, mirror)
    apt.update().check()
    # Acquire-By-Hash: apt fetches the Packages.xz by its SHA256, not by name.
    xz_digest = sha256_file(signed_archive.binary_dir / "Packages.xz")
    assert mirror.requests_for(f"dists/{signed_archive.suite}/InRelease")
    by_hash = f"dists/{signed_archive.suite}/main/binary-amd64/by-hash/SHA256/{xz_digest}"
    assert mirror.requests_for(by_hash)
    assert mirror.deb_bytes_sent() == 0

    downloads = tmp_path / "downloads"
    apt.download(_all_names(signed_archive), downloads).check()
    for package in signed_archive.packages:
        assert sha256_file(downloads / package.download_name) == package.sha256
    assert mirror.deb_bytes_sent() == sum(p.size for p in signed_archive.packages)
    for package in signed_archive.packages:
        assert mirror.bytes_sent(package.filename) == package.size


def test_second_update_revalidates_inrelease_with_if_modified_since(
    signed_archive: SignedArchive, mirror: Mirror, apt_client: AptClientFactory
) -> None:
    apt = apt_client(signed_archive, mirror)
    apt.update().check()
    apt.update().check()
    in_release = mirror.requests_for(f"dists/{signed_archive.suite}/InRelease")
    assert len(in_release) == 2
    assert in_release[1].header("If-Modified-Since") is not None
    assert in_release[1].header("Cache-Control") == "max-age=0"
    assert [r.status for r in mirror.responses if r.path.endswith("InRelease")] == [200, 304]


def _expect_failure(result: AptResult, *needles: str) -> None:
    assert result.returncode != 0, result.output
    for needle in needles:
        assert needle in result.output, result.output


# --- the attacks are real: apt itself rejects them ------------------------------------------------


def test_apt_update_fails_on_archive_signed_by_unknown_key(
    archive_copy: SignedArchive, serve_archive: MirrorFactory, apt_client: AptClientFactory
) -> None:
    resign(archive_copy)
    in_release = archive_copy.dist_dir / "InRelease"
    assert _gpgv(archive_copy.unknown_key.keyring, in_release).returncode == 0
    apt = apt_client(archive_copy, serve_archive(archive_copy.root))
    _expect_failure(apt.update(), "NO_PUBKEY")


def test_apt_update_fails_on_unsigned_paragraph_before_inrelease(
    archive_copy: SignedArchive, serve_archive: MirrorFactory, apt_client: AptClientFactory
) -> None:
    prepend_unsigned_paragraph(archive_copy)
    # gpgv alone still accepts the file: the signed block inside is intact.
    assert _gpgv(archive_copy.keyring, archive_copy.dist_dir / "InRelease").returncode == 0
    apt = apt_client(archive_copy, serve_archive(archive_copy.root))
    # apt refuses it outright ("Clearsigned file isn't valid, got 'NOSPLIT'") and does not fall
    # back to Release + Release.gpg.
    _expect_failure(apt.update(), "NOSPLIT")


def test_apt_update_fails_on_expired_valid_until(
    archive_copy: SignedArchive, serve_archive: MirrorFactory, apt_client: AptClientFactory
) -> None:
    now = datetime.now(UTC)
    expired = reindex(
        archive_copy, date=now - timedelta(days=2), valid_until=now - timedelta(hours=1)
    )
    assert "Valid-Until: " in (expired.dist_dir / "InRelease").read_text()
    apt = apt_client(expired, serve_archive(expired.root))
    _expect_failure(apt.update(), "is expired")


def test_apt_update_fails_on_tampered_packages(
    archive_copy: SignedArchive, serve_archive: MirrorFactory, apt_client: AptClientFactory
) -> None:
    tamper_packages(archive_copy)
    apt = apt_client(archive_copy, serve_archive(archive_copy.root))
    _expect_failure(apt.update(), "Hash Sum mismatch")


def test_apt_download_fails_on_tampered_deb(
    archive_copy: SignedArchive,
    serve_archive: MirrorFactory,
    apt_client: AptClientFactory,
    tmp_path: Path,
) -> None:
    name = archive_copy.small_packages[1].name
    package = archive_copy.package(name)
    tamper_deb(archive_copy, name)
    assert archive_copy.path(package.filename).stat().st_size == package.size
    apt = apt_client(archive_copy, serve_archive(archive_copy.root))
    apt.update().check()
    _expect_failure(apt.download([name], tmp_path / "dl"), "Hash Sum mismatch")
    assert not (tmp_path / "dl" / package.download_name).exists()


def test_mirror_override_serves_tampered_bytes_without_touching_disk(
    signed_archive: SignedArchive, mirror: Mirror, apt_client: AptClientFactory, tmp_path: Path
) -> None:
    package = signed_archive.big
    mirror.override(package.filename, tampered_deb_bytes(signed_archive, package.name))
    apt = apt_client(signed_archive, mirror)
    apt.update().check()
    _expect_failure(apt.download([package.name], tmp_path / "dl"), "Hash Sum mismatch")
    assert mirror.bytes_sent(package.filename) == package.size
    assert sha256_file(signed_archive.path(package.filename)) == package.sha256


# --- the mirror as an HTTP server -----------------------------------------------------------------


def test_range_request_returns_206_with_the_right_bytes(
    signed_archive: SignedArchive, mirror: Mirror
) -> None:
    package = signed_archive.big
    url = mirror.url_for(package.filename)
    data = signed_archive.path(package.filename).read_bytes()

    status, body = _get(url, {"Range": "bytes=1000-1999"})
    assert (status, body) == (206, data[1000:2000])
    status, body = _get(url, {"Range": "bytes=-10"})
    assert (status, body) == (206, data[-10:])
    status, body = _get(url, {"Range": f"bytes={package.size - 5}-"})
    assert (status, body) == (206, data[-5:])
    status, _ = _get(url, {"Range": f"bytes={package.size}-"})
    assert status == 416
    assert mirror.bytes_sent(package.filename) == 1000 + 10 + 5

    head = [r for r in mirror.requests if r.header("Range") == "bytes=1000-1999"]
    assert head[0].method == "GET" and head[0].path == package.filename


def test_if_range_and_if_modified_since_follow_last_modified(
    signed_archive: SignedArchive, mirror: Mirror
) -> None:
    package = signed_archive.small_packages[0]
    url = mirror.url_for(package.filename)
    with _DIRECT.open(urllib.request.Request(url, method="HEAD"), timeout=10) as response:
        last_modified = response.headers["Last-Modified"]
        assert int(response.headers["Content-Length"]) == package.size
        assert response.read() == b""
    assert mirror.bytes_sent(package.filename) == 0

    status, body = _get(url, {"Range": "bytes=10-", "If-Range": last_modified})
    assert status == 206 and len(body) == package.size - 10
    status, body = _get(url, {"Range": "bytes=10-", "If-Range": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert status == 200 and len(body) == package.size
    status, body = _get(url, {"If-Modified-Since": last_modified})
    assert (status, body) == (304, b"")
    status, _ = _get(url, {"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert status == 200


def test_requests_are_confined_to_the_archive(mirror: Mirror) -> None:
    base = mirror.url.removesuffix("/debian")
    assert _get(f"{base}/debian/..%2f..%2fetc%2fpasswd")[0] == 404
    assert _get(f"{base}/etc/passwd")[0] == 404
    assert _get(mirror.url_for("dists/nonexistent/InRelease"))[0] == 404
    assert _get(mirror.url_for("dists"), method="POST")[0] == 405


def test_stall_holds_a_transfer_until_released(
    signed_archive: SignedArchive, mirror: Mirror
) -> None:
    package = signed_archive.big
    mirror.stall(package.filename, 1_000_000)
    results: list[tuple[int, bytes]] = []
    reader = threading.Thread(target=lambda: results.append(_get(mirror.url_for(package.filename))))
    reader.start()
    mirror.wait_for_bytes(package.filename, 1_000_000)
    assert mirror.bytes_sent(package.filename) == 1_000_000
    assert results == []
    mirror.release(package.filename)
    reader.join(30)
    assert results[0][0] == 200 and hashlib.sha256(results[0][1]).hexdigest() == package.sha256


def test_set_status_and_throttle(signed_archive: SignedArchive, mirror: Mirror) -> None:
    package = signed_archive.small_packages[0]
    mirror.set_status(package.filename, 503)
    assert _get(mirror.url_for(package.filename))[0] == 503
    mirror.set_status(package.filename, None)
    mirror.throttle(package.filename, 1_000_000)
    status, body = _get(mirror.url_for(package.filename))
    assert status == 200 and hashlib.sha256(body).hexdigest() == package.sha256


def test_apt_resumes_a_cut_download_with_range_and_if_range(
    signed_archive: SignedArchive, mirror: Mirror, apt_client: AptClientFactory
) -> None:
    package = signed_archive.big
    apt = apt_client(signed_archive, mirror)
    apt.update().check()
    mirror.cut(package.filename, 5_000_000)
    _expect_failure(apt.fetch([package.name]))
    assert apt.partial_file(package.download_name).stat().st_size == 5_000_000
    mirror.cut(package.filename, None)
    apt.fetch([package.name]).check()
    assert sha256_file(apt.archive_file(package.download_name)) == package.sha256
    resumed = mirror.requests_for(package.filename)[-1]
    assert resumed.header("Range") == "bytes=5000000-"
    assert resumed.header("If-Range") is not None
    assert [r.status for r in mirror.responses if r.path == package.filename] == [200, 206]
    assert mirror.bytes_sent(package.filename) == package.size


def test_apt_killed_mid_download_restarts_from_zero_against_an_exact_if_range(
    signed_archive: SignedArchive, mirror: Mirror, apt_client: AptClientFactory
) -> None:
    # After a kill the partial file's mtime is the time of the last write, not Last-Modified, so
    # apt's If-Range does not match and an RFC 9110 server answers 200 with the whole file.
    package = signed_archive.big
    apt = apt_client(signed_archive, mirror)
    apt.update().check()
    mirror.stall(package.filename, 3_000_000)
    running = apt.start_fetch([package.name])
    partial = apt.partial_file(package.download_name)
    # The mirror counts what it handed to the socket; wait until apt has written all of it.
    wait_until(lambda: partial.exists() and partial.stat().st_size == 3_000_000, what="partial")
    running.kill()
    assert running.wait().returncode == -9
    mirror.release(package.filename)
    apt.fetch([package.name]).check()
    retry = mirror.requests_for(package.filename)[-1]
    assert retry.header("Range") == "bytes=3000000-"
    assert retry.header("If-Range") is not None
    assert mirror.responses[-1].status == 200
    assert sha256_file(apt.archive_file(package.download_name)) == package.sha256


# --- proxy modes: apt's side of the contract, with the mirror standing in for the proxy ----------


def test_http_proxy_mode_sends_absolute_form_targets(
    signed_archive: SignedArchive, mirror: Mirror, apt_client: AptClientFactory, tmp_path: Path
) -> None:
    # The source names a mirror on port 9 (discard) that nothing listens on: every byte has to
    # come through the proxy, here played by the test mirror itself.
    nowhere = "http://127.0.0.1:9/debian"
    apt = apt_client(signed_archive, nowhere, mode=ProxyMode.HTTP_PROXY, proxy=mirror.host_port)
    apt.update().check()
    package = signed_archive.small_packages[0]
    apt.download([package.name], tmp_path / "dl").check()
    targets = [r.target for r in mirror.requests]
    assert all(t.startswith(f"{nowhere}/") for t in targets), targets
    assert f"{nowhere}/{package.filename}" in targets
    assert all(r.header("Host") == "127.0.0.1:9" for r in mirror.requests)


def test_url_prefix_mode_puts_the_mirror_host_first_in_the_path(
    signed_archive: SignedArchive,
    mirror: Mirror,
    serve_archive: MirrorFactory,
    apt_client: AptClientFactory,
    tmp_path: Path,
) -> None:
    # A second mirror serving under /<first mirror host:port>/debian/ plays the URL-prefix proxy.
    proxy = serve_archive(signed_archive.root, prefix=f"{mirror.host_port}/debian")
    apt = apt_client(signed_archive, mirror, mode=ProxyMode.URL_PREFIX, proxy=proxy.host_port)
    assert apt.source_uri == f"http://{proxy.host_port}/{mirror.host_port}/debian"
    apt.update().check()
    apt.download([signed_archive.small_packages[0].name], tmp_path / "dl").check()
    assert mirror.requests == []
    assert all(r.target.startswith(f"/{mirror.host_port}/debian/") for r in proxy.requests)
    assert proxy.deb_bytes_sent() == signed_archive.small_packages[0].size


# --- DaemonProcess, against a stand-in for `python -m dhtdeb` -------------------------------------

_STAND_IN = textwrap.dedent(
    """
    import argparse, http.server, json, os, signal, socket, sys, threading
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--proxy")
    parser.add_argument("--peer")
    parser.add_argument("--no-dht", action="store_true")
    parser.add_argument("--keyring", action="append")
    parser.add_argument("--die", action="store_true")
    args = parser.parse_args()
    if args.die:
        print("stand-in: refusing to start", file=sys.stderr)
        sys.exit(3)
    starts = os.path.join(args.state_dir, "starts")
    count = int(open(starts).read()) + 1 if os.path.exists(starts) else 1
    open(starts, "w").write(str(count))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"starts": count, "keyrings": args.keyring}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    peer = socket.socket()
    peer.bind(("127.0.0.1", 0))
    addresses = {"proxy": "127.0.0.1:%d" % server.server_address[1],
                 "peer": "127.0.0.1:%d" % peer.getsockname()[1], "pid": os.getpid()}
    tmp = os.path.join(args.state_dir, ".addresses.json.tmp")
    with open(tmp, "w") as f:
        json.dump(addresses, f)
    os.replace(tmp, os.path.join(args.state_dir, "addresses.json"))
    print("stand-in: serving", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    peer.close()
    """
)


@pytest.fixture
def stand_in(tmp_path: Path) -> tuple[str, ...]:
    script = tmp_path / "stand_in.py"
    script.write_text(_STAND_IN)
    return (sys.executable, str(script))


def test_daemon_process_waits_for_addresses_and_restarts_with_its_state(
    dhtdeb_daemon: DaemonFactory, signed_archive: SignedArchive, stand_in: tuple[str, ...]
) -> None:
    daemon = dhtdeb_daemon(command=stand_in)
    assert daemon.status() == {"starts": 1, "keyrings": [str(signed_archive.keyring)]}
    assert daemon.addresses.pid == daemon.pid
    first_proxy = daemon.proxy
    daemon.restart()
    assert daemon.status()["starts"] == 2
    assert daemon.proxy_url == f"http://{daemon.proxy}"
    assert daemon.stop() == 0
    assert daemon.proxy != "" and first_proxy != ""
    assert "stand-in: serving" in daemon.log_tail()


def test_daemon_process_reports_the_log_when_the_daemon_dies(
    dhtdeb_daemon: DaemonFactory, stand_in: tuple[str, ...]
) -> None:
    with pytest.raises(DaemonFailed, match="refusing to start"):
        dhtdeb_daemon(command=stand_in, extra_args=["--die"])


def test_daemon_process_kill_is_sigkill(
    dhtdeb_daemon: DaemonFactory, stand_in: tuple[str, ...]
) -> None:
    daemon = dhtdeb_daemon(command=stand_in)
    assert daemon.kill() == -9
    assert not daemon.running
