"""Synchronous cores with a ManualClock: peer store caps and expiry, tokens, limits, schedule,
routing admission rules."""

from __future__ import annotations

import random
import socket

from kademlia.node import Node

from dhtdeb.clock import ManualClock
from dhtdeb.dht.guards import SourceLimiter, WriteTokens
from dhtdeb.dht.peer_store import PeerStore
from dhtdeb.dht.routing import DhtRoutingTable
from dhtdeb.dht.schedule import AnnounceSchedule


def _key(i: int) -> bytes:
    return i.to_bytes(20, "big")


def test_peer_list_keeps_every_announcer_instead_of_overwriting(seed: int) -> None:
    store = PeerStore(ManualClock(), random.Random(seed))
    for port in range(1000, 1010):
        store[_key(1)] = ("10.0.0.1", port)
    assert sorted(store[_key(1)]) == [("10.0.0.1", p) for p in range(1000, 1010)]


def test_store_caps_keys_and_peers_and_drops_new_entries_when_full(seed: int) -> None:
    clock = ManualClock()
    store = PeerStore(clock, random.Random(seed))  # libtorrent defaults: 2000 keys, 500 per key
    for i in range(3000):
        store.add(_key(i), ("10.0.0.1", 1))
    assert store.key_count() == 2000
    assert store.peers(_key(0), 10) == [("10.0.0.1", 1)]  # old entries were not evicted
    assert store.peers(_key(2500), 10) == []
    for port in range(1, 700):
        store.add(_key(1), ("10.0.0.2", port))
    assert len(store.peers(_key(1), 10_000)) == 500
    assert store.add(_key(1), ("10.0.0.2", 5))  # a listed peer may still refresh
    assert not store.add(_key(1), ("10.0.0.9", 1))
    assert store.dropped == 1000 + 200 + 1


def test_entries_expire_one_by_one(seed: int) -> None:
    clock = ManualClock()
    store = PeerStore(clock, random.Random(seed), ttl=2700)
    store.add(_key(1), ("10.0.0.1", 1))
    clock.advance(2000)
    store.add(_key(1), ("10.0.0.2", 1))
    clock.advance(800)
    assert store.peers(_key(1), 10) == [("10.0.0.2", 1)]
    clock.advance(2000)
    store.expire()
    assert store.key_count() == 0


def test_a_refreshed_entry_outlives_the_scan_it_skipped(seed: int) -> None:
    """Entries are scanned for expiry only once the key's earliest one may have expired: a
    refresh in between must neither revive an expired entry nor lose a live one."""
    clock = ManualClock()
    store = PeerStore(clock, random.Random(seed), ttl=100)
    store.add(_key(1), ("10.0.0.1", 1))
    clock.advance(50)
    store.add(_key(1), ("10.0.0.2", 1))
    assert len(store.peers(_key(1), 10)) == 2  # nothing may have expired: no scan
    clock.advance(40)
    store.add(_key(1), ("10.0.0.1", 1))  # refreshed: now lives until 190
    clock.advance(20)  # 110: the first announce of .1 would have expired
    assert sorted(store.peers(_key(1), 10)) == [("10.0.0.1", 1), ("10.0.0.2", 1)]
    clock.advance(45)  # 155: .2 expired at 150
    assert store.peers(_key(1), 10) == [("10.0.0.1", 1)]
    clock.advance(35)  # 190
    assert store.peers(_key(1), 10) == [] and store.key_count() == 0


def test_full_store_admits_new_keys_once_old_ones_expire(seed: int) -> None:
    clock = ManualClock()
    store = PeerStore(clock, random.Random(seed), max_keys=10, ttl=100)
    for i in range(10):
        store.add(_key(i), ("10.0.0.1", 1))
    assert not store.add(_key(99), ("10.0.0.1", 1))
    clock.advance(101)
    assert store.add(_key(99), ("10.0.0.1", 1))


def test_peers_returns_a_random_subset(seed: int) -> None:
    store = PeerStore(ManualClock(), random.Random(seed))
    for port in range(1, 301):
        store.add(_key(1), ("10.0.0.1", port))
    first, second = store.peers(_key(1), 50), store.peers(_key(1), 50)
    assert len(first) == len(set(first)) == 50
    assert first != second


def test_entries_follow_adds_refreshes_and_expiries_between_reads(seed: int) -> None:
    """The store keeps a key's address order between reads: every read must still give live
    entries only, each once, with the node id of the latest announce."""
    clock = ManualClock()
    rng = random.Random(seed)
    store = PeerStore(clock, random.Random(seed), ttl=100, max_peers_per_key=40)
    live: dict[tuple[str, int], tuple[float, bytes]] = {}  # the model: address -> (expiry, id)
    for step in range(2000):
        clock.advance(rng.choice((0.0, 1.0, 7.0)))
        now = clock.now()
        live = {a: entry for a, entry in live.items() if entry[0] > now}
        if rng.random() < 0.6:
            address = ("10.0.0.1", rng.randrange(1, 60))
            node_id = bytes([step % 256]) * 20
            if store.add(_key(1), address, node_id):
                live[address] = (now + 100, node_id)
            else:
                assert address not in live and len(live) == 40
        else:
            limit = rng.choice((1, 5, 50))
            got = store.entries(_key(1), limit)
            assert len(got) == min(limit, len(live)), f"step {step}"
            assert len({(c.host, c.port) for c in got}) == len(got)
            for contact in got:
                assert live[(contact.host, contact.port)][1] == contact.node_id, f"step {step}"


def test_write_token_is_bound_to_address_and_rotates(seed: int) -> None:
    clock = ManualClock()
    tokens = WriteTokens(clock, random.Random(seed), rotation=300)
    token = tokens.issue(("10.0.0.1", 4000))
    assert tokens.check(token, ("10.0.0.1", 4000))
    assert not tokens.check(token, ("10.0.0.2", 4000))
    assert not tokens.check(token, ("10.0.0.1", 4001))
    clock.advance(301)
    assert tokens.check(token, ("10.0.0.1", 4000))  # previous secret still accepted
    clock.advance(301)
    assert not tokens.check(token, ("10.0.0.1", 4000))


def test_source_limiter_refills_and_is_bounded() -> None:
    clock = ManualClock()
    limiter = SourceLimiter(clock, rate=10, burst=20, max_sources=100)
    assert sum(limiter.allow("a") for _ in range(100)) == 20
    clock.advance(1)
    assert sum(limiter.allow("a") for _ in range(100)) == 10
    for i in range(1000):
        limiter.allow(f"s{i}")
    assert len(limiter) == 100


def test_reannounce_is_jittered_and_batched(seed: int) -> None:
    clock = ManualClock()
    schedule = AnnounceSchedule(clock, random.Random(seed), interval=1800, jitter=0.2)
    for i in range(100):
        schedule.announced(f"k{i}", True)
    dues = sorted(schedule.next_due(f"k{i}") or 0 for i in range(100))
    assert 1440 <= dues[0] < dues[-1] <= 1800
    assert len(set(dues)) == 100
    clock.advance(1800)
    assert len(schedule.due(16)) == 16
    assert len(schedule.due(1000)) == 84
    assert schedule.due(1000) == []


def _table(allow_loopback: bool, family: socket.AddressFamily = socket.AF_INET) -> DhtRoutingTable:
    probes: list[Node] = []
    return DhtRoutingTable(
        Node(b"\x00" * 20),
        8,
        ManualClock(),
        family,
        allow_loopback=allow_loopback,
        on_bucket_full=probes.append,
    )


def test_one_contact_per_ip_except_loopback(seed: int) -> None:
    rng = random.Random(seed)
    table = _table(allow_loopback=True)
    for port in range(1, 6):
        table.add_contact(Node(rng.randbytes(20), "10.0.0.1", port))
        table.add_contact(Node(rng.randbytes(20), "127.0.0.1", port))
    hosts = sorted(n.ip for n in table.contacts())
    assert hosts.count("10.0.0.1") == 1
    assert hosts.count("127.0.0.1") == 5
    strict = _table(allow_loopback=False)
    for port in range(1, 6):
        strict.add_contact(Node(rng.randbytes(20), "127.0.0.1", port))
    assert len(strict) == 1


def test_known_id_keeps_its_address(seed: int) -> None:
    table = _table(allow_loopback=True)
    node_id = random.Random(seed).randbytes(20)
    table.add_contact(Node(node_id, "10.0.0.1", 1))
    table.add_contact(Node(node_id, "10.0.0.2", 1))
    assert [(n.ip, n.port) for n in table.contacts()] == [("10.0.0.1", 1)]


def test_ipv4_and_ipv6_are_kept_apart(seed: int) -> None:
    rng = random.Random(seed)
    v4, v6 = _table(True), _table(True, socket.AF_INET6)
    for table in (v4, v6):
        table.add_contact(Node(rng.randbytes(20), "10.0.0.1", 1))
        table.add_contact(Node(rng.randbytes(20), "2001:db8::1", 1))
        table.add_contact(Node(rng.randbytes(20), "not-an-ip", 1))
    assert [n.ip for n in v4.contacts()] == ["10.0.0.1"]
    assert [n.ip for n in v6.contacts()] == ["2001:db8::1"]


def test_routing_table_stays_bounded_under_many_ids(seed: int) -> None:
    rng = random.Random(seed)
    table = _table(allow_loopback=False)
    for i in range(20_000):
        table.add_contact(
            Node(rng.randbytes(20), f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1)
        )
    assert len(table) <= 8 * 160
    assert sum(len(b.replacement_nodes) for b in table.buckets) <= 40 * len(table.buckets)


def test_a_full_bucket_pings_its_head_only_after_fifteen_silent_minutes(seed: int) -> None:
    """BEP 5's good nodes: a contact heard from lately is not pinged to make room for another,
    and a requester that could only wait in the replacement cache is not probed (at 1,000
    nodes, those pings were a third of all requests)."""
    rng = random.Random(seed)
    clock = ManualClock()
    pinged: list[Node] = []
    table = DhtRoutingTable(
        Node(b"\x00" * 20),
        8,
        clock,
        socket.AF_INET,
        allow_loopback=False,
        on_bucket_full=pinged.append,
    )

    def far(i: int) -> Node:  # ids sharing exactly 5 bits: their bucket does not split
        return Node(bytes([0x80 | (i % 2) << 2]) + rng.randbytes(19), f"10.0.0.{i + 1}", 1)

    contacts = [far(i) for i in range(8)]
    for contact in contacts:
        table.add_contact(contact)
    table.add_contact(Node(b"\x01" + rng.randbytes(19), "10.0.1.1", 1))  # splits off our half
    newcomer = far(8)
    assert len(table) == 9
    assert not table.has_room(newcomer)
    table.add_contact(newcomer)  # kept in the replacement cache; every contact is good
    assert pinged == []
    assert table.find(newcomer.id) == newcomer
    clock.advance(15 * 60 - 1)
    table.add_contact(contacts[1])  # heard from again
    assert not table.has_room(newcomer)
    clock.advance(2)
    assert table.has_room(newcomer)
    table.add_contact(newcomer)
    assert pinged == [contacts[0]]  # the least recently seen, silent for 15 minutes
    table.remove_contact(contacts[0])  # it did not answer: the newcomer takes its place
    assert newcomer in table.buckets[table.get_bucket_for(newcomer)].nodes.values()
