"""The dashboard at `/`: without JavaScript its tables show /status.json's numbers; in a real
browser (Debian's headless chromium) its script polls /status.json and draws the charts without a
console error; and nothing on the page comes from, or points to, another host.

One scenario with the DHT on: A fetches small packages from the mirror, B fetches one that A
holds, so that B has bytes from peers and from the mirror, lookups and a routing table to show.
Chromium runs on virtual time (`--virtual-time-budget`): its 2 s polls need no waiting.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from support import wait_until
from support.apt import AptClientFactory, ProxyMode
from support.archive import SignedArchive
from support.daemon import DaemonProcess
from support.mirror import Mirror
from support.swarm import SwarmNode, bootstrap_node, swarm_node, wait_until_found

from dhtdeb.proxy.dashboard import RecentFile, render

__all__ = ["bootstrap_node", "swarm_node"]  # fixtures, which pytest finds by name

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
MAX_PAGE_BYTES = 30 * 1024
# Set to a path (docs/dashboard.png) to keep the screenshot the test takes.
SCREENSHOT_ENV = "DHTDEB_DASHBOARD_PNG"


class _Cells(HTMLParser):
    """The `data-k` cells of a page (group.key -> text), the body's attributes, and every URL
    in an attribute that loads or links something."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, str] = {}
        self.body: dict[str, str | None] = {}
        self.links: list[str] = []
        self._key: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "body":
            self.body = named
        for attr in ("src", "href", "action", "srcset", "poster", "data"):
            if named.get(attr):
                self.links.append(str(named[attr]))
        key = named.get("data-k")
        if tag == "td" and key is not None:
            self._key = key
            self.cells[key] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._key = None

    def handle_data(self, data: str) -> None:
        if self._key is not None:
            self.cells[self._key] += data


def _parse(page: str) -> _Cells:
    parser = _Cells()
    parser.feed(page)
    parser.close()
    return parser


def _get(daemon: DaemonProcess, path: str) -> tuple[str, dict[str, str]]:
    with _DIRECT.open(f"{daemon.proxy_url}{path}", timeout=10) as response:
        return response.read().decode(), dict(response.headers)


def _expected_cells(status: dict[str, Any]) -> dict[str, str]:
    return {
        f"{group}.{key}": str(value).lower() if isinstance(value, bool) else str(value)
        for group, values in status.items()
        if isinstance(values, dict) and values
        for key, value in values.items()
    }


def _quiet_page(daemon: DaemonProcess) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The page, its headers, and the status it shows: retried until /status.json reads the
    same just before and just after the page (DHT maintenance may move a counter meanwhile)."""
    found: list[tuple[str, dict[str, str], dict[str, Any]]] = []

    def same() -> bool:
        before = daemon.status()
        page, headers = _get(daemon, "/")
        if daemon.status() != before:
            return False
        found.append((page, headers, before))
        return True

    wait_until(same, 20, "an unchanged status around a page load")
    return found[-1]


def _assert_no_other_host(page: str, links: list[str]) -> None:
    assert not [link for link in links if re.match(r"(?i)\s*(https?:)?//", link)], links
    for host in re.findall(r"(?i)https?://([^/\s\"'<>]+)", page):
        assert host.startswith("127.0.0.1:"), host  # the loopback mirror's URLs, as text


def _chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    return subprocess.run(
        [
            binary,
            "--headless=new",
            "--disable-gpu",
            "--no-sandbox",  # tests run as root in containers
            "--no-proxy-server",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",  # 5 s of page time: the first poll and two more
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _console_lines(stderr: str) -> list[str]:
    """Console messages (uncaught errors, CSP violations, console.error) chromium logged."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line]


def test_dashboard_of_a_swarm_node(
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    swarm_node: SwarmNode,
    tmp_path: Path,
) -> None:
    a, b = swarm_node(), swarm_node()
    small = signed_archive.small_packages
    apt_a = apt_client(signed_archive, mirror, mode=ProxyMode.HTTP_PROXY, proxy=a.proxy)
    apt_a.update().check()
    apt_a.download([p.name for p in small], tmp_path / "a").check()
    wait_until_found(b, [a], small[1].sha256)
    apt_b = apt_client(signed_archive, mirror, mode=ProxyMode.HTTP_PROXY, proxy=b.proxy)
    apt_b.update().check()
    apt_b.download([small[1].name], tmp_path / "b").check()
    wait_until(
        lambda: b.status()["downloads"]["active"] == 0 and b.status()["cache"]["unsynced"] == 0,
        what="B's download committed",
    )

    # (a) Without JavaScript: the tables are the status.
    page, headers, status = _quiet_page(b)
    assert status["bytes"]["from_peers"] > 0 and status["bytes"]["from_mirror"] > 0
    assert len(page.encode()) < MAX_PAGE_BYTES
    assert headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    parsed = _parse(page)
    assert parsed.cells == _expected_cells(status)
    _assert_no_other_host(page, parsed.links)
    assert small[1].filename in page  # the recently used file, by its URL

    # (b) With JavaScript: polled, drawn, no console message.
    result = _chromium(f"{b.proxy_url}/", tmp_path / "profile", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    assert _console_lines(result.stderr) == [], result.stderr[-2000:]
    dom = _parse(result.stdout)
    assert int(dom.body.get("data-drawn") or 0) >= 2, result.stdout[-2000:]
    assert 'id="live" class="on"' in result.stdout
    now = b.status()
    assert dom.cells["bytes.from_peers"] == str(now["bytes"]["from_peers"])
    assert dom.cells["cache.bytes"] == str(now["cache"]["bytes"])

    # (c) A screenshot.
    screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "dashboard.png").resolve()
    result = _chromium(
        f"{b.proxy_url}/",
        tmp_path / "profile",
        f"--screenshot={screenshot}",
        "--window-size=1280,900",
        "--hide-scrollbars",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert _console_lines(result.stderr) == [], result.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_network_text_is_escaped() -> None:
    hostile = "<script>alert(1)</script>"
    status: dict[str, object] = {
        "version": hostile,
        "node_id": '"><img src=x>',
        "bytes": {"from_peers": 1, "from_mirror": 3, hostile: hostile},
    }
    recent = [RecentFile("ab" * 32, 5, 0.0, False, 0, f"http://evil/{hostile}")]
    page = render(status, recent, 0.0)
    assert hostile not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert _parse(page).cells["bytes.from_peers"] == "1"
    assert "25.0 %" in page  # the share from peers
