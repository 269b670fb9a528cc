"""The ring of recent transfers (dhtdeb/recent_transfers.py) and the peer ledger
(dhtdeb/swarm/peer_ledger.py): bounded, ordered, and the fields /status.json shows."""

from __future__ import annotations

import pytest

from dhtdeb.discovery import Peer
from dhtdeb.recent_transfers import RecentTransfers, TransferRecord, top_peer
from dhtdeb.swarm.peer_ledger import VIA_DHT, VIA_LAN, VIA_UPLOADS, PeerLedger


def _download(
    n: int, *, peer_bytes: int = 0, mirror_bytes: int = 0, error: str | None = None
) -> TransferRecord:
    return TransferRecord(
        f"http://m/pool/{n}.deb",
        f"{n:064x}",
        100 + n,
        10.0 + n,
        0.5,
        peer_bytes=peer_bytes,
        mirror_bytes=mirror_bytes,
        error=error,
    )


def test_the_ring_keeps_the_newest_records_newest_first() -> None:
    ring = RecentTransfers(size=3)
    for n in range(5):
        ring.record(_download(n, mirror_bytes=100 + n))
    assert len(ring) == 3
    assert [r.url for r in ring.newest_first()] == [f"http://m/pool/{n}.deb" for n in (4, 3, 2)]
    assert [d["size"] for d in ring.as_dicts(0.0)] == [104, 103, 102]
    with pytest.raises(ValueError):
        RecentTransfers(size=0)


def test_a_record_as_status_json_has_it() -> None:
    ring = RecentTransfers()
    peer, peer_bytes = top_peer({"10.0.0.2:9978": 300, "10.0.0.1:9978": 300, "10.0.0.3:9978": 5})
    assert (peer, peer_bytes) == ("10.0.0.1:9978", 300)  # a tie goes to the lowest address
    ring.record(
        TransferRecord(
            "http://m/pool/a.deb",
            "ab" * 32,
            805,
            finished=20.0,
            seconds=1.23456,
            peer_bytes=605,
            mirror_bytes=200,
            peers=3,
            top_peer=peer,
            top_peer_bytes=peer_bytes,
        )
    )
    ring.hit("http://m/pool/b.deb", "cd" * 32, 50, 50, started=21.0, now=21.25)
    hit, download = ring.as_dicts(wall_offset=1000.0)
    assert download == {
        "url": "http://m/pool/a.deb",
        "sha256": "ab" * 32,
        "size": 805,
        "at": 1020.0,
        "seconds": 1.235,
        "source": "peers+mirror",
        "peer_bytes": 605,
        "mirror_bytes": 200,
        "cache_bytes": 0,
        "peers": 3,
        "top_peer": "10.0.0.1:9978",
        "top_peer_bytes": 300,
        "error": None,
    }
    assert hit["source"] == "cache" and hit["cache_bytes"] == 50 and hit["peer_bytes"] == 0
    assert (hit["at"], hit["seconds"]) == (1021.25, 0.25)
    assert _download(1, mirror_bytes=5).source == "mirror"
    assert _download(1, peer_bytes=5).source == "peers"
    assert _download(1, error="mirror answered HTTP 404").source == "none"
    assert top_peer({}) == (None, 0)


def test_the_ledger_counts_per_peer_and_lists_the_most_recently_seen_first() -> None:
    ledger = PeerLedger(size=3)
    a, b = Peer("10.0.0.1", 9978, b"\xaa" * 20), Peer("10.0.0.2", 9978)
    ledger.found(a, VIA_DHT, now=1.0)
    ledger.found(b, VIA_LAN, now=2.0)
    ledger.received(a, 1000, now=3.0)
    ledger.received(a, 500, now=4.0)
    ledger.sent("10.0.0.2", 700, now=5.0)  # b's host fetched from this node
    ledger.sent("10.0.0.9", 10, now=6.0)  # a host known only by its requests
    ledger.banned(b, "lied: bad piece 3", until=3605.0, now=5.0)
    rows = ledger.as_dicts(now=6.0, wall_offset=100.0)
    assert [r["address"] for r in rows] == ["10.0.0.9", "10.0.0.2:9978", "10.0.0.1:9978"]
    upload_only, second, first = rows
    assert upload_only["via"] == VIA_UPLOADS and upload_only["sent_bytes"] == 10
    assert first == {
        "address": "10.0.0.1:9978",
        "via": VIA_DHT,
        "node": "aa" * 20,
        "received_bytes": 1500,
        "pieces": 2,
        "sent_bytes": None,
        "last_seen": 104.0,
        "banned": False,
        "ban_reason": None,
        "banned_until": None,
    }
    assert second["via"] == VIA_LAN and second["sent_bytes"] == 700 and second["banned"] is True
    assert (second["ban_reason"], second["banned_until"]) == ("lied: bad piece 3", 3705.0)
    # The ban runs out: still known, no longer banned.
    assert ledger.rows(now=4000.0)[1].banned is False
    # Bounded: a fourth peer pushes out the one seen longest ago (a).
    ledger.found(Peer("10.0.0.3", 9978), VIA_DHT, now=7.0)
    ledger.found(Peer("10.0.0.4", 9978), VIA_DHT, now=8.0)
    assert "10.0.0.1:9978" not in [r.address for r in ledger.rows(now=8.0)]
    assert len(ledger.rows(now=8.0, limit=2)) == 2


def test_uploads_to_a_host_of_several_peers_get_a_row_of_their_own() -> None:
    """On loopback every daemon shares 127.0.0.1: the bytes sent cannot be told apart."""
    ledger = PeerLedger()
    ledger.found(Peer("127.0.0.1", 4001), VIA_DHT, now=1.0)
    ledger.found(Peer("127.0.0.1", 4002), VIA_DHT, now=1.0)
    ledger.sent("127.0.0.1", 64, now=2.0)
    rows = ledger.rows(now=2.0)
    assert [(r.address, r.sent_bytes) for r in rows] == [
        ("127.0.0.1", 64),
        ("127.0.0.1:4001", None),
        ("127.0.0.1:4002", None),
    ]
    ipv6 = PeerLedger()
    ipv6.found(Peer("::1", 9978), VIA_DHT, now=1.0)
    assert ipv6.rows(now=1.0)[0].address == "[::1]:9978"
