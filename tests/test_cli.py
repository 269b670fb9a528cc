"""`dhtdeb status` and `dhtdeb cache list|stats|pin|unpin|evict` against a real daemon, and the
local endpoints behind them (`GET /cache.json`, `POST /cache/<action>/<sha256>`)."""

from __future__ import annotations

import hashlib
import json
import socket
import tempfile
from pathlib import Path
from typing import Any

from support import rawhttp, wait_until
from support.apt import AptClient, AptClientFactory, ProxyMode
from support.archive import SignedArchive
from support.daemon import DaemonFactory, DaemonProcess
from support.mirror import Mirror
from typer.testing import CliRunner, Result

from dhtdeb.cli import app
from dhtdeb.cli_status import human_bytes

CACHE_LIMIT = 150_000  # bytes: dt-hotel (about 124 KB) fits, dt-hotel and dt-foxtrot do not


def _cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _listing(daemon: DaemonProcess) -> dict[str, Any]:
    data = json.loads(daemon.get("/cache.json"))
    assert isinstance(data, dict)
    return data


def _stored(daemon: DaemonProcess) -> set[str]:
    return {entry["sha256"] for entry in _listing(daemon)["files"]}


def _fetch(apt: AptClient, daemon: DaemonProcess, archive: SignedArchive, *names: str) -> None:
    """apt downloads the packages; returns once the daemon has stored them (apt may finish
    before the store commits)."""
    destination = Path(tempfile.mkdtemp(dir=apt.workdir))  # apt skips files it already has
    apt.download(list(names), destination).check()
    for name in names:
        package = archive.package(name)
        data = (destination / package.download_name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == package.sha256
        wait_until(lambda p=package: p.sha256 in _stored(daemon), 30, f"{name} stored")


def _client(
    factory: AptClientFactory, archive: SignedArchive, mirror: Mirror, daemon: DaemonProcess
) -> AptClient:
    apt = factory(archive, mirror, mode=ProxyMode.HTTP_PROXY, proxy=daemon.proxy)
    apt.update().check()
    return apt


def _sections(text: str) -> dict[str, dict[str, str]]:
    """`dhtdeb status` output: table title → row label → the rest of the row."""
    tables: dict[str, dict[str, str]] = {}
    for block in text.split("\n\n")[1:]:
        if not block.strip():
            continue
        title, *rows = block.strip("\n").splitlines()
        cells = (row.strip().split("   ", 1) for row in rows)
        tables[title] = {label.strip(): rest.strip() for label, rest in cells}
    return tables


def _post(daemon: DaemonProcess, path: str, **headers: str) -> rawhttp.RawResponse:
    return rawhttp.request(daemon.proxy, "POST", path, headers=headers)


def test_status_tables_show_the_counters(
    dhtdeb_daemon: DaemonFactory,
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
) -> None:
    daemon = dhtdeb_daemon()
    apt = _client(apt_client, signed_archive, mirror, daemon)
    _fetch(apt, daemon, signed_archive, "dt-hotel", "dt-alpha")
    status = daemon.status()
    result = _cli("status", "--url", daemon.proxy_url)
    assert result.exit_code == 0, result.output
    tables = _sections(result.stdout)
    assert {"Bytes", "Requests by outcome", "Verification failures by kind", "Cache"} <= set(tables)
    from_mirror = tables["Bytes"]["from the mirror"]
    assert from_mirror.startswith(f"{status['bytes']['from_mirror']:,}")
    assert from_mirror.endswith("100.0 % of downloads")
    assert tables["Bytes"]["from peers"] == "0     0.0 % of downloads"
    assert tables["Bytes"]["to apt"].startswith(f"{status['bytes']['to_apt']:,}")
    requests = tables["Requests by outcome"]
    assert requests["from the mirror"] == f"{status['requests']['from_mirror']:,}"
    assert requests["from the mirror"] != "0"
    assert tables["Cache"]["files"] == str(status["cache"]["files"])
    assert tables["Cache"]["limit"] == "unlimited"
    assert set(tables["Verification failures by kind"].values()) == {"0"}

    raw = _cli("status", "--json", "--url", daemon.proxy_url)
    assert raw.exit_code == 0
    # The raw JSON of a second read: the same store (the group fsync may have run in between,
    # so `unsynced` is left out).
    stable = ("files", "bytes", "limit_bytes", "pinned", "pinned_bytes", "evictions")
    cache = json.loads(raw.stdout)["cache"]
    assert {k: cache[k] for k in stable} == {k: status["cache"][k] for k in stable}

    # The recent transfers: both files, from the mirror, as a table and in the JSON.
    hotel, alpha = signed_archive.package("dt-hotel"), signed_archive.package("dt-alpha")
    for package in (hotel, alpha):
        record = next(
            t for t in json.loads(raw.stdout)["transfers"] if t["sha256"] == package.sha256
        )
        assert record["url"].endswith("/" + package.filename)
        assert (record["source"], record["mirror_bytes"], record["peer_bytes"]) == (
            "mirror",
            package.size,
            0,
        )
        line = next(
            line for line in result.stdout.splitlines() if package.filename.rsplit("/")[-1] in line
        )
        assert "mirror" in line and human_bytes(package.size) in line
    assert "Recent transfers" in tables and "Peers" not in tables  # no DHT: no peer known

    by_state_dir = _cli("status", "--state-dir", str(daemon.state_dir))  # via addresses.json
    assert by_state_dir.exit_code == 0 and daemon.proxy_url in by_state_dir.stdout


def test_status_without_a_daemon_is_one_line_and_exit_1() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    for command in (("status",), ("cache", "list"), ("cache", "pin", "ab" * 32)):
        result = _cli(*command, "--url", url)
        assert result.exit_code == 1
        assert result.stdout == ""
        assert result.stderr.splitlines() == [
            f"dhtdeb is not running at {url}: connection refused; start it with `dhtdeb serve` "
            "(or `systemctl start dhtdeb`), or point --url/--state-dir at it"
        ]
        assert "Traceback" not in result.output


def test_pin_keeps_a_file_through_eviction_until_unpinned(
    dhtdeb_daemon: DaemonFactory,
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
) -> None:
    daemon = dhtdeb_daemon(extra_args=("--cache-limit", str(CACHE_LIMIT)))
    url = daemon.proxy_url
    apt = _client(apt_client, signed_archive, mirror, daemon)
    hotel, foxtrot = signed_archive.package("dt-hotel"), signed_archive.package("dt-foxtrot")
    _fetch(apt, daemon, signed_archive, "dt-hotel")

    listed = _cli("cache", "list", "--url", url)
    assert listed.exit_code == 0
    row = next(line for line in listed.stdout.splitlines() if line.startswith(hotel.sha256))
    assert row.split()[1] == str(hotel.size)
    assert row.endswith(f"/{hotel.filename}")  # the URL the index knows it by

    pinned = _cli("cache", "pin", hotel.sha256, "--url", url)
    assert (pinned.exit_code, pinned.stdout) == (0, f"pinned {hotel.sha256}\n")
    again = _cli("cache", "pin", hotel.sha256, "--url", url)
    assert again.stdout == f"{hotel.sha256} was pinned already\n"
    assert _listing(daemon)["pinned"] == 1 and daemon.status()["cache"]["pinned"] == 1

    # Above the limit, everything else goes, least recently used first; the pinned file stays.
    _fetch(apt, daemon, signed_archive, "dt-foxtrot")
    _fetch(apt, daemon, signed_archive, "dt-delta-data")
    stored = _stored(daemon)
    assert hotel.sha256 in stored and foxtrot.sha256 not in stored
    assert stored == {hotel.sha256, signed_archive.package("dt-delta-data").sha256}

    refused = _cli("cache", "evict", hotel.sha256, "--url", url)
    assert refused.exit_code == 1 and "is pinned" in refused.stderr

    stats = _cli("cache", "stats", "--url", url)
    assert "pinned files  1" in stats.stdout and f"limit         {CACHE_LIMIT}" in stats.stdout

    unpinned = _cli("cache", "unpin", hotel.sha256, "--url", url)
    assert (unpinned.exit_code, unpinned.stdout) == (0, f"unpinned {hotel.sha256}\n")
    _fetch(apt, daemon, signed_archive, "dt-golf")  # now the pinned file was the oldest
    assert hotel.sha256 not in _stored(daemon)

    daemon.restart()  # nothing pinned is remembered once unpinned
    assert _listing(daemon)["pinned"] == 0


def test_pins_survive_a_restart(
    dhtdeb_daemon: DaemonFactory,
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
) -> None:
    daemon = dhtdeb_daemon()
    apt = _client(apt_client, signed_archive, mirror, daemon)
    _fetch(apt, daemon, signed_archive, "dt-golf")
    golf = signed_archive.package("dt-golf").sha256
    assert _post(daemon, f"/cache/pin/{golf}").status == 200
    daemon.restart()
    pinned = [entry["sha256"] for entry in _listing(daemon)["files"] if entry["pinned"]]
    assert pinned == [golf]


def test_evict_removes_a_file_and_apt_gets_it_again(
    dhtdeb_daemon: DaemonFactory,
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    tmp_path: Path,
) -> None:
    daemon = dhtdeb_daemon()
    url = daemon.proxy_url
    apt = _client(apt_client, signed_archive, mirror, daemon)
    alpha = signed_archive.package("dt-alpha")
    _fetch(apt, daemon, signed_archive, "dt-alpha")
    before = daemon.status()["cache"]

    evicted = _cli("cache", "evict", alpha.sha256, "--url", url)
    assert (evicted.exit_code, evicted.stdout) == (
        0,
        f"evicted {alpha.sha256} ({alpha.size} bytes)\n",
    )
    assert alpha.sha256 not in _stored(daemon)
    after = daemon.status()["cache"]
    assert (after["files"], after["bytes"]) == (before["files"] - 1, before["bytes"] - alpha.size)
    gone = _cli("cache", "evict", alpha.sha256, "--url", url)
    assert gone.exit_code == 1 and "not in the store" in gone.stderr

    mirror.reset_counters()
    _fetch(apt, daemon, signed_archive, "dt-alpha")  # verified again, from the mirror
    assert mirror.deb_bytes_sent() == alpha.size
    assert alpha.sha256 in _stored(daemon)


def test_cache_actions_check_their_input(
    dhtdeb_daemon: DaemonFactory,
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
) -> None:
    daemon = dhtdeb_daemon()
    apt = _client(apt_client, signed_archive, mirror, daemon)
    _fetch(apt, daemon, signed_archive, "dt-echo++")
    echo = signed_archive.package("dt-echo++").sha256
    refused_before = daemon.status()["requests"]["refused"]

    for bad in ("AB" * 32, "ab" * 31, "ab" * 33, "zz" * 32, ""):
        assert _post(daemon, f"/cache/evict/{bad}").status == 400, bad
    for action in ("pin", "unpin", "evict"):
        assert _post(daemon, f"/cache/{action}/{'cd' * 32}").status == 404
    assert _post(daemon, f"/cache/pin/{echo}").status == 200
    conflict = _post(daemon, f"/cache/evict/{echo}")
    assert conflict.status == 409 and b"pinned" in conflict.body
    # Only POST changes the cache, and never from a web page (a browser sends Origin).
    assert rawhttp.request(daemon.proxy, "GET", f"/cache/unpin/{echo}").status == 405
    assert _post(daemon, f"/cache/unpin/{echo}", Origin="http://evil.example").status == 403
    assert rawhttp.request(daemon.proxy, "DELETE", f"/cache/evict/{echo}").status == 405
    assert _listing(daemon)["pinned"] == 1
    assert daemon.status()["requests"]["refused"] == refused_before + 1  # the DELETE

    bad_cli = _cli("cache", "evict", "not-a-hash", "--url", daemon.proxy_url)
    assert bad_cli.exit_code == 2 and "not a SHA256" in bad_cli.stderr


def test_help_shows_config_sections_as_written() -> None:
    """Help texts name config keys as "[peer] listen"; rich markup used to swallow "[peer]"."""
    result = CliRunner().invoke(app, ["bootstrap", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "[peer] listen, [cache] state_dir, [dht] bootstrap" in result.output
