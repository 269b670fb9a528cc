"""HTTP behaviour apt relies on: methods, limits, HEAD, Range/If-Range, pipelining, status pages."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from datetime import UTC, datetime, timedelta

import pytest
from support import rawhttp, wait_until
from support.apt import AptClientFactory, ProxyMode
from support.archive import SignedArchive, reindex
from support.daemon import DaemonFactory, DaemonProcess
from support.mirror import Mirror, MirrorFactory

from dhtdeb.netaddr import parse_cidr
from dhtdeb.proxy.server import AccessPolicy


@pytest.fixture
def learned(
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    dhtdeb_daemon: DaemonFactory,
) -> DaemonProcess:
    """A daemon that has verified the archive through one `apt-get update`."""
    daemon = dhtdeb_daemon()
    apt_client(
        signed_archive, mirror, mode=ProxyMode.HTTP_PROXY, proxy=daemon.proxy
    ).update().check()
    return daemon


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "CONNECT"])
def test_only_get_and_head(method: str, dhtdeb_daemon: DaemonFactory, mirror: Mirror) -> None:
    daemon = dhtdeb_daemon()
    target = f"{mirror.host_port}" if method == "CONNECT" else f"{mirror.url}/dists/x/InRelease"
    response = rawhttp.request(daemon.proxy, method, target)
    assert response.status == 405
    assert response.headers["Allow"] == "GET, HEAD"
    assert mirror.requests == []
    assert daemon.status()["requests"]["refused"] == 1


def test_bounded_sizes_and_traversal(dhtdeb_daemon: DaemonFactory, mirror: Mirror) -> None:
    daemon = dhtdeb_daemon()
    [huge_header] = rawhttp.exchange(
        daemon.proxy, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 1
    )
    assert huge_header.status in (400, 431)
    long_target = rawhttp.request(daemon.proxy, "GET", "/" + mirror.host_port + "/" + "a" * 5000)
    assert long_target.status in (400, 414)
    traversal = rawhttp.request(
        daemon.proxy, "GET", f"/{mirror.host_port}/debian/%2e%2e/%2e%2e/etc/passwd"
    )
    assert traversal.status == 400
    assert mirror.requests == []


def test_access_policy() -> None:
    policy = AccessPolicy((parse_cidr("10.1.0.0/16"),))
    assert (
        policy.permits("127.0.0.1") and policy.permits("::1") and policy.permits("::ffff:127.0.0.5")
    )
    assert policy.permits("10.1.2.3") and policy.permits("::ffff:10.1.2.3")
    assert not policy.permits("10.2.0.1") and not policy.permits("192.0.2.1")
    assert not policy.permits(None) and not policy.permits("garbage")
    assert not AccessPolicy().permits("192.0.2.1")


def test_health_status_and_metrics(dhtdeb_daemon: DaemonFactory) -> None:
    daemon = dhtdeb_daemon()
    assert rawhttp.request(daemon.proxy, "GET", "/health").status == 200
    status = daemon.status()
    assert isinstance(status["version"], str) and len(status["node_id"]) == 40
    groups = {
        "bytes": {"from_peers", "from_mirror", "to_apt", "to_peers"},
        "requests": {
            "cache_hits",
            "from_peers",
            "from_mirror",
            "passed_through",
            "refused",
            "read_ahead",
        },
        "verify_failures": {"signature", "index", "peer", "mirror"},
        "dht": {"routing_table", "stored_keys", "announced", "unannounced", "rate_limited"},
        "cache": {"files", "bytes", "limit_bytes", "unsynced", "rechecked_after_crash"},
        "index": {"learning", "pool_files"},
    }
    for group, keys in groups.items():
        assert keys <= set(status[group]), group
        assert all(isinstance(status[group][k], int) for k in keys), group
    metrics = rawhttp.request(daemon.proxy, "GET", "/metrics")
    assert b'dhtdeb_requests_total{kind="cache_hits"}' in metrics.body
    page = rawhttp.request(daemon.proxy, "GET", "/")
    assert page.status == 200 and b"dhtdeb" in page.body


def test_head_and_range_on_a_verified_file(
    signed_archive: SignedArchive, mirror: Mirror, learned: DaemonProcess
) -> None:
    big = signed_archive.big
    url = f"{mirror.url}/{big.filename}"
    head = rawhttp.request(learned.proxy, "HEAD", url)
    assert head.status == 200 and head.body == b""
    assert int(head.headers["Content-Length"]) == big.size
    assert head.headers["X-Dhtdeb-Verified"] == "yes"
    assert mirror.deb_bytes_sent() == 0  # HEAD of a verified file costs the mirror nothing

    data = signed_archive.path(big.filename).read_bytes()
    # While the file is first downloaded (served from the running transfer) …
    first = rawhttp.request(learned.proxy, "GET", url, {"Range": f"bytes={big.size - 1000}-"})
    assert first.status == 206
    assert first.headers["Content-Range"] == f"bytes {big.size - 1000}-{big.size - 1}/{big.size}"
    assert first.body == data[-1000:]
    last_modified = first.headers["Last-Modified"]
    # … and from the store, resuming as apt does with If-Range.
    resumed = rawhttp.request(
        learned.proxy, "GET", url, {"Range": "bytes=1000-", "If-Range": last_modified}
    )
    assert resumed.status == 206 and resumed.body == data[1000:]
    stale = rawhttp.request(
        learned.proxy,
        "GET",
        url,
        {"Range": "bytes=1000-", "If-Range": "Thu, 01 Jan 1998 00:00:00 GMT"},
    )
    assert stale.status == 200 and hashlib.sha256(stale.body).hexdigest() == big.sha256
    beyond = rawhttp.request(learned.proxy, "GET", url, {"Range": f"bytes={big.size}-"})
    assert beyond.status == 416
    assert mirror.deb_bytes_sent() == big.size


def test_apt_resumes_a_partial_file(
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    learned: DaemonProcess,
) -> None:
    big = signed_archive.big
    source = signed_archive.path(big.filename)
    apt = apt_client(signed_archive, mirror, mode=ProxyMode.HTTP_PROXY, proxy=learned.proxy)
    apt.update().check()
    half = big.size // 2
    # After a dropped connection apt's partial file carries the server's Last-Modified as mtime.
    apt.seed_partial(big.download_name, source.read_bytes()[:half], os.stat(source).st_mtime)
    before = learned.status()["bytes"]["to_apt"]
    apt.fetch([big.name]).check()
    assert (
        hashlib.sha256(apt.archive_file(big.download_name).read_bytes()).hexdigest() == big.sha256
    )
    sent = learned.status()["bytes"]["to_apt"] - before
    assert sent == big.size - half  # only the missing half crossed the proxy


def test_ten_pipelined_requests_on_one_connection(
    signed_archive: SignedArchive, mirror: Mirror, learned: DaemonProcess
) -> None:
    packages = list(signed_archive.small_packages)
    targets = [packages[i % len(packages)] for i in range(10)]
    host = mirror.host_port
    wire = b"".join(
        f"GET {mirror.url}/{p.filename} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode() for p in targets
    )
    answers = rawhttp.exchange(learned.proxy, wire, 10)
    assert [a.status for a in answers] == [200] * 10
    for package, answer in zip(targets, answers, strict=True):
        assert answer.body == signed_archive.path(package.filename).read_bytes()


def test_pipelined_pool_files_start_before_the_one_ahead_of_them_is_sent(
    signed_archive: SignedArchive, mirror: Mirror, learned: DaemonProcess
) -> None:
    """apt pipelines an upgrade 10 requests at a time; the proxy answers them in order, but
    starts every download at once: with the first file stalled at the mirror, the mirror still
    sees the requests for all the others."""
    first, *rest = signed_archive.small_packages[:6]
    mirror.stall(first.filename, after_bytes=100)
    host = mirror.host_port
    wire = b"".join(
        f"GET {mirror.url}/{p.filename} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        for p in (first, *rest)
    )
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answers = pool.submit(rawhttp.exchange, learned.proxy, wire, 1 + len(rest))
        mirror.wait_for(lambda: all(mirror.requests_for(p.filename) for p in rest))
        assert not answers.done()  # the first answer is still waiting for its bytes
        mirror.release(first.filename)
        result = answers.result()
    assert [a.status for a in result] == [200] * (1 + len(rest))
    for package, answer in zip((first, *rest), result, strict=True):
        assert answer.body == signed_archive.path(package.filename).read_bytes()
    assert learned.status()["requests"]["read_ahead"] == len(rest)


def test_expired_release_is_not_believed(
    archive_copy: SignedArchive, serve_archive: MirrorFactory, dhtdeb_daemon: DaemonFactory
) -> None:
    reindex(archive_copy, valid_until=datetime.now(UTC) - timedelta(hours=1))
    mirror = serve_archive(archive_copy.root)
    daemon = dhtdeb_daemon()
    in_release = rawhttp.request(
        daemon.proxy, "GET", f"{mirror.url}/dists/{archive_copy.suite}/InRelease"
    )
    assert in_release.status == 200
    packages = rawhttp.request(
        daemon.proxy,
        "GET",
        f"{mirror.url}/dists/{archive_copy.suite}/main/binary-amd64/Packages.xz",
    )
    assert packages.headers["X-Dhtdeb-Verified"] == "no"
    assert daemon.status()["cache"]["files"] == 0


def test_conditional_requests_for_a_stored_file(
    signed_archive: SignedArchive, mirror: Mirror, learned: DaemonProcess
) -> None:
    package = signed_archive.small_packages[0]
    url = f"{mirror.url}/{package.filename}"
    first = rawhttp.request(learned.proxy, "GET", url)
    assert first.status == 200 and hashlib.sha256(first.body).hexdigest() == package.sha256
    wait_until(lambda: learned.status()["cache"]["files"] >= 1, 30, "the file stored")
    etag, last_modified = first.headers["Etag"], first.headers["Last-Modified"]
    assert etag == f'"{package.sha256}"'
    for headers in ({"If-None-Match": etag}, {"If-Modified-Since": last_modified}):
        again = rawhttp.request(learned.proxy, "GET", url, headers)
        assert again.status == 304 and again.body == b"", headers
    older = rawhttp.request(
        learned.proxy, "GET", url, {"If-Modified-Since": "Thu, 01 Jan 1998 00:00:00 GMT"}
    )
    assert older.status == 200 and older.body == first.body
    other = rawhttp.request(learned.proxy, "GET", url, {"If-None-Match": '"0000"'})
    assert other.status == 200 and other.body == first.body
    assert mirror.deb_bytes_sent() == package.size


def test_apt_patching_by_pdiff_still_gets_new_packages_verified(
    archive_copy: SignedArchive, serve_archive: MirrorFactory, dhtdeb_daemon: DaemonFactory
) -> None:
    """apt that updates by pdiff fetches Packages.diff/Index and patches, never the new
    Packages file: the daemon fetches that file itself, so the new packages are verified."""
    diff_index = archive_copy.binary_dir / "Packages.diff" / "Index"
    diff_index.parent.mkdir()
    diff_index.write_text("SHA256-Current: " + "0" * 64 + " 1\n")
    archive = reindex(archive_copy)
    listed = f"{archive.component}/binary-{archive.arch}/Packages.diff/Index"
    assert listed in (archive.dist_dir / "InRelease").read_text()
    mirror = serve_archive(archive.root)
    daemon = dhtdeb_daemon()
    suite = f"{mirror.url}/dists/{archive.suite}"
    in_release = rawhttp.request(daemon.proxy, "GET", f"{suite}/InRelease")
    assert in_release.headers["X-Dhtdeb-Verified"] == "yes"
    index = rawhttp.request(daemon.proxy, "GET", f"{suite}/{listed}")
    assert index.status == 200 and index.headers["X-Dhtdeb-Verified"] == "yes"
    assert index.body == diff_index.read_bytes()
    package = archive.small_packages[0]
    deb = rawhttp.request(daemon.proxy, "GET", f"{mirror.url}/{package.filename}")
    assert deb.status == 200 and deb.headers["X-Dhtdeb-Verified"] == "yes"
    assert hashlib.sha256(deb.body).hexdigest() == package.sha256
    fetched = [r.path for r in mirror.requests if "/binary-" in r.path]
    assert any(path.rsplit("/", 1)[-1].startswith("Packages.") for path in fetched), fetched
    assert daemon.status()["requests"]["passed_through"] == 0


def test_upstream_connections_are_kept_alive(
    signed_archive: SignedArchive, mirror: Mirror, learned: DaemonProcess
) -> None:
    """apt's files one after another cost the mirror one connection, not one each."""
    packages = signed_archive.small_packages[:5]
    for package in packages:
        answer = rawhttp.request(learned.proxy, "GET", f"{mirror.url}/{package.filename}")
        assert answer.status == 200 and answer.headers["X-Dhtdeb-Verified"] == "yes"
    connections = {r.peer for p in packages for r in mirror.requests_for(p.filename)}
    assert len(connections) == 1, connections


def test_only_the_allowed_mirrors_are_fetched_from(
    signed_archive: SignedArchive, mirror: Mirror, dhtdeb_daemon: DaemonFactory
) -> None:
    """[access] mirrors: requests for any other host are refused before anything goes upstream
    (an admitted client cannot make the daemon fetch from the hosts of its network)."""
    in_release = f"{mirror.url}/dists/{signed_archive.suite}/InRelease"
    other = dhtdeb_daemon(extra_args=["--mirror", "mirror.example"])
    refused = rawhttp.request(other.proxy, "GET", in_release)
    assert refused.status == 403, refused
    assert b"not one of the allowed mirrors" in refused.body
    assert other.status()["requests"]["refused"] == 1
    assert mirror.requests_for(f"dists/{signed_archive.suite}/InRelease") == []

    host, port = mirror.host_port.rsplit(":", 1)
    allowed = dhtdeb_daemon(extra_args=["--mirror", "mirror.example", "--mirror", f"{host}:{port}"])
    answer = rawhttp.request(allowed.proxy, "GET", in_release)
    assert answer.status == 200, answer
    assert answer.headers["X-Dhtdeb-Verified"] == "yes"
