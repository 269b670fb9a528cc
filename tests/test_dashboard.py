"""The dashboard at `/`: without JavaScript its tables show /status.json's numbers; in a real
browser (Debian's headless chromium) its script polls /status.json and draws the charts without a
console error; and nothing on the page comes from, or points to, another host.

One scenario with the DHT on: A fetches small packages from the mirror, B fetches one that A
holds, one that only the mirror has, the first again (a cache hit) and then A's others, so that B
has bytes from peers and from the mirror, recent transfers of every source, a known peer,
lookups and a routing table to show. Chromium runs on virtual time (`--virtual-time-budget`): its
2 s polls need no waiting. The lists are also drawn from a hostile status by a stand-in server.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
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

from dhtdeb.cli_status import human_bytes
from dhtdeb.proxy.dashboard import CONTENT_SECURITY_POLICY, RecentFile, render
from dhtdeb.proxy.dashboard_lists import PEER_COLUMNS, TRANSFER_COLUMNS, raw

__all__ = ["bootstrap_node", "swarm_node"]  # fixtures, which pytest finds by name

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# A page stays small: full lists (20 transfers, 50 peers, 12 stored files) take about 70 KiB.
MAX_PAGE_BYTES = 96 * 1024
LISTS = {"transfers": TRANSFER_COLUMNS, "peers": PEER_COLUMNS}
# Set to a path (docs/dashboard.png) to keep the screenshot the test takes.
SCREENSHOT_ENV = "DHTDEB_DASHBOARD_PNG"


class _Cells(HTMLParser):
    """The `data-k` cells of a page (group.key -> text), the rows of its lists (list id -> one
    dict per row, field -> `data-v`, and the same with the cells' text), the body's attributes,
    and every URL in an attribute that loads or links something."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, str] = {}
        self.lists: dict[str, list[dict[str, str]]] = {}
        self.list_texts: dict[str, list[dict[str, str]]] = {}
        self.body: dict[str, str | None] = {}
        self.links: list[str] = []
        self._key: str | None = None
        self._list: str | None = None
        self._field: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "body":
            self.body = named
        if tag == "table" and named.get("id") in LISTS:
            self._list = str(named["id"])
            self.lists[self._list], self.list_texts[self._list] = [], []
        if tag == "tr" and self._list is not None and not self._in_head:
            self.lists[self._list].append({})
            self.list_texts[self._list].append({})
        if tag == "td" and self._list is not None and named.get("data-f") is not None:
            self._field = str(named["data-f"])
            self.lists[self._list][-1][self._field] = named.get("data-v") or ""
            self.list_texts[self._list][-1][self._field] = ""
        if tag == "thead":
            self._in_head = True
        if tag == "tbody":
            self._in_head = False
        for attr in ("src", "href", "action", "srcset", "poster", "data"):
            if named.get(attr):
                self.links.append(str(named[attr]))
        key = named.get("data-k")
        if tag == "td" and key is not None:
            self._key = key
            self.cells[key] = ""

    _in_head = False

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._key = self._field = None
        if tag == "table":
            self._list = None

    def handle_data(self, data: str) -> None:
        if self._key is not None:
            self.cells[self._key] += data
        if self._list is not None and self._field is not None:
            self.list_texts[self._list][-1][self._field] += data


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


def _expected_lists(status: Mapping[str, Any]) -> dict[str, list[dict[str, str]]]:
    """The rows the lists must show: each shown field of each record, as text."""
    return {
        name: [
            {field: raw(record.get(field)) for field, _, _ in columns} for record in status[name]
        ]
        for name, columns in LISTS.items()
    }


def _same_value(shown: str, expected: str) -> bool:
    """The script writes numbers as JavaScript does (1.0 becomes "1")."""
    if shown == expected:
        return True
    try:
        return float(shown) == float(expected)
    except ValueError:
        return False


def _same_rows(shown: Sequence[Mapping[str, str]], expected: Sequence[Mapping[str, str]]) -> bool:
    return len(shown) == len(expected) and all(
        s.keys() == e.keys() and all(_same_value(s[k], e[k]) for k in e)
        for s, e in zip(shown, expected, strict=True)
    )


def _one(records: list[dict[str, Any]], **wanted: Any) -> dict[str, Any]:
    found = [r for r in records if all(r.get(k) == v for k, v in wanted.items())]
    assert len(found) == 1, (wanted, records)
    return found[0]


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
    shared, mirror_only = small[1], small[-1]
    apt_a = apt_client(signed_archive, mirror, mode=ProxyMode.HTTP_PROXY, proxy=a.proxy)
    apt_a.update().check()
    apt_a.download([p.name for p in small[:-1]], tmp_path / "a").check()
    wait_until_found(b, [a], shared.sha256)
    apt_b = apt_client(signed_archive, mirror, mode=ProxyMode.HTTP_PROXY, proxy=b.proxy)
    apt_b.update().check()
    apt_b.download([shared.name], tmp_path / "b").check()  # from A
    apt_b.download([mirror_only.name], tmp_path / "b").check()  # A lacks it: the mirror
    apt_b.download([shared.name], tmp_path / "b-again").check()  # B's store: a cache hit
    wait_until(lambda: a.status()["dht"]["unannounced"] == 0, what="A's files announced")
    others = [p.name for p in small[:-1] if p is not shared]
    apt_b.download(others, tmp_path / "b").check()  # a busier page
    wait_until(
        lambda: b.status()["downloads"]["active"] == 0 and b.status()["cache"]["unsynced"] == 0,
        what="B's downloads committed",
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
    assert shared.filename in page  # the recently used file, by its URL

    # The recent transfers, newest first, with their sources and byte counts.
    transfers = status["transfers"]
    assert parsed.lists["transfers"] == _expected_lists(status)["transfers"]
    ats = [t["at"] for t in transfers]
    assert ats == sorted(ats, reverse=True)
    downloads_of_shared = [t for t in transfers if t["url"].endswith("/" + shared.filename)]
    peer_record = _one(downloads_of_shared, source="peers")
    assert peer_record["peer_bytes"] == shared.size == peer_record["size"]
    assert (peer_record["peers"], peer_record["top_peer"]) == (1, a.addresses.peer)
    assert peer_record["top_peer_bytes"] == shared.size and peer_record["error"] is None
    hit = _one(downloads_of_shared, source="cache")
    assert hit["cache_bytes"] == shared.size and hit["peer_bytes"] == hit["mirror_bytes"] == 0
    mirror_record = _one(
        [t for t in transfers if t["url"].endswith("/" + mirror_only.filename)], source="mirror"
    )
    assert mirror_record["mirror_bytes"] == mirror_only.size and mirror_record["peer_bytes"] == 0
    assert any("/dists/" in t["url"] and t["source"] == "mirror" for t in transfers)  # Packages
    row = transfers.index(hit)
    assert parsed.list_texts["transfers"][row]["source"] == "cache"
    assert parsed.list_texts["transfers"][row]["cache_bytes"] == human_bytes(shared.size)

    # The known peers: A, by the address its peer server listens on, and what it sent.
    assert parsed.lists["peers"] == _expected_lists(status)["peers"]
    peer_a = _one(status["peers"], address=a.addresses.peer)
    assert peer_a["received_bytes"] >= shared.size and peer_a["pieces"] >= 1
    assert peer_a["banned"] is False and peer_a["node"]
    # A's side: its peer server sent those bytes to B's host (loopback: one address for all).
    sent = [p["sent_bytes"] or 0 for p in a.status()["peers"] if p["address"] == "127.0.0.1"]
    assert sum(sent) >= shared.size

    # (b) With JavaScript: polled, drawn, the lists redrawn, no console message.
    result = _chromium(f"{b.proxy_url}/", tmp_path / "profile", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    assert _console_lines(result.stderr) == [], result.stderr[-2000:]
    dom = _parse(result.stdout)
    assert int(dom.body.get("data-drawn") or 0) >= 2, result.stdout[-2000:]
    assert 'id="live" class="on"' in result.stdout
    now = b.status()
    assert dom.cells["bytes.from_peers"] == str(now["bytes"]["from_peers"])
    assert dom.cells["cache.bytes"] == str(now["cache"]["bytes"])
    for name, rows in _expected_lists(now).items():
        assert _same_rows(dom.lists[name], rows), (name, dom.lists[name], rows)

    # (c) A screenshot, tall enough for the lists.
    screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "dashboard.png").resolve()
    result = _chromium(
        f"{b.proxy_url}/",
        tmp_path / "profile",
        f"--screenshot={screenshot}",
        "--window-size=1280,1500",
        "--hide-scrollbars",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert _console_lines(result.stderr) == [], result.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


HOSTILE = "<script>alert(1)</script>"
HOSTILE_ATTR = '"><img src=x onerror=alert(2)>'


def _hostile_status() -> dict[str, Any]:
    """A status whose every string could come from a mirror, apt or a peer, made to break out."""
    transfer = {
        "url": f"http://127.0.0.1/{HOSTILE}{HOSTILE_ATTR}.deb",
        "sha256": HOSTILE,
        "size": 2048,
        "at": 1.5,
        "seconds": 0.25,
        "source": HOSTILE,
        "peer_bytes": 2048,
        "mirror_bytes": 0,
        "cache_bytes": 0,
        "peers": 1,
        "top_peer": HOSTILE_ATTR,
        "top_peer_bytes": 2048,
        "error": HOSTILE,
    }
    peer = {
        "address": HOSTILE_ATTR,
        "via": HOSTILE,
        "node": HOSTILE,
        "received_bytes": 2048,
        "pieces": 1,
        "sent_bytes": None,
        "last_seen": 1.5,
        "banned": True,
        "ban_reason": f"lied: {HOSTILE}",
        "banned_until": 3602.0,
    }
    return {
        "version": HOSTILE,
        "node_id": HOSTILE_ATTR,
        "bytes": {"from_peers": 1, "from_mirror": 3, HOSTILE: HOSTILE},
        "transfers": [transfer, {**transfer, "top_peer": None, "error": None}],
        "peers": [peer, "not an object", None],
    }


def test_network_text_is_escaped() -> None:
    status = _hostile_status()
    recent = [RecentFile("ab" * 32, 5, 0.0, False, 0, f"http://evil/{HOSTILE}")]
    page = render(status, recent, 2.0)
    assert HOSTILE not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    parsed = _parse(page)
    assert parsed.cells["bytes.from_peers"] == "1"
    assert "25.0 %" in page  # the share from peers
    assert parsed.lists["transfers"][0]["url"] == status["transfers"][0]["url"]
    assert parsed.lists["transfers"][0]["top_peer"] == HOSTILE_ATTR  # the attribute holds it
    assert parsed.list_texts["peers"] == [
        {
            "address": HOSTILE_ATTR,
            "via": HOSTILE,
            "node": HOSTILE[:12],
            "received_bytes": "2.0 KiB",
            "pieces": "1",
            "sent_bytes": "-",
            "last_seen": "0 s ago",
            "banned": "banned",
            "ban_reason": f"lied: {HOSTILE}",
            "banned_until": "in 60 min",
        }
    ]  # what is not a record is left out


class _StandIn(http.server.BaseHTTPRequestHandler):
    """Serves /status.json from the hostile status, and the page rendered without its lists:
    whatever rows the page shows, its script drew."""

    def do_GET(self) -> None:
        status = _hostile_status()
        if self.path == "/status.json":
            body, kind = json.dumps(status).encode(), "application/json"
        else:
            listless = {k: v for k, v in status.items() if k not in LISTS}
            body, kind = render(listless, [], 2.0).encode(), "text/html"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stand_in() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_the_script_draws_hostile_lists_as_text(stand_in: str, tmp_path: Path) -> None:
    result = _chromium(f"{stand_in}/", tmp_path / "profile", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    assert _console_lines(result.stderr) == [], result.stderr[-2000:]
    dom = _parse(result.stdout)
    assert int(dom.body.get("data-drawn") or 0) >= 2, result.stdout[-2000:]
    assert "<img" not in result.stdout and "<script>alert" not in result.stdout
    status = _hostile_status()
    assert dom.lists["transfers"][0]["url"] == status["transfers"][0]["url"]
    assert dom.list_texts["peers"][0]["address"] == HOSTILE_ATTR
    assert dom.list_texts["peers"][0]["banned"] == "banned"
    assert len(dom.lists["peers"]) == 1
