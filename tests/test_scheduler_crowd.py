"""A flash crowd: several downloaders of one file, each driven by the real `SwarmScheduler`.

Seeded and deterministic. N downloaders start the same file at once on one `ManualClock`; each
one's first DHT lookup finds nobody (no one has announced yet), a later one finds all the others
after a seeded delay. They trade offers (the pieces each got from the mirror, docs/swarm.md "Flash
crowd: offers between downloaders") and split the mirror's pieces by their node ids. The mirror's
rate is shared equally among the streams open at each moment, a node's upload rate among its
uploads, and time advances in steps of DT. The driver side follows dhtdeb/swarm/download.py (one
timer re-armed after every wake, mirror requests in doubling windows), the answers to other
downloaders dhtdeb/downloads.py `Downloads.partial`. A failing run names its seed.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import itertools
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from dhtdeb.clock import ManualClock
from dhtdeb.discovery import Peer
from dhtdeb.swarm.pieces import PieceList, piece_span
from dhtdeb.swarm.scheduler import (
    MIRROR,
    AcceptPiece,
    Action,
    AuditPiece,
    BanPeer,
    CancelPiece,
    CheckPiece,
    ConfirmPiece,
    Failed,
    Finished,
    GiveUpMirrorPiece,
    MirrorWindow,
    ReadMirrorPiece,
    RequestPiece,
    RequestPieceList,
    RetractPiece,
    SchedulerConfig,
    StartMirror,
    SwarmScheduler,
)

PS = 1000  # bytes per piece: the core only sees digests, so small pieces cost nothing
DT = 0.05  # seconds per simulation step
LATENCY = 0.02  # seconds for a piece list, a 404 or a 503 to come back
TIME_LIMIT = 120.0  # virtual seconds; a crowd still running then has stalled
VOID = bytes(32)  # a piece list's entry for a piece that is not offered
WEB_SEED = ("overdue at peers", "peers busy")  # StartMirror reasons: a peer was too slow
LIST_CHECK = ("referee", "corroborate the list")
RELAYS = True  # downloaders pass on pieces taken on others' offers (Downloads.partial)
# A block checked after a whole-file mismatch, as a share of a piece: 16 KiB of 1 MiB.
CONFIG = SchedulerConfig(check_block=PS // 64)


def _digest(tag: str) -> bytes:
    return hashlib.sha256(tag.encode()).digest()


@dataclass(eq=False)
class Flow:
    """Bytes on their way to downloader `to`: piece `index` from node `source` or, with
    `source` None, from the mirror (a stream's piece, or an audit block)."""

    to: int
    index: int
    left: float
    source: int | None
    audit: AuditPiece | None = None
    check: CheckPiece | None = None


@dataclass(eq=False)
class Node:
    k: int
    peer: Peer
    node_id: bytes
    s: SwarmScheduler
    liar: bool
    lies: set[int] = field(default_factory=set)  # a liar: pieces it offers (and serves) wrong
    blind: set[int] = field(default_factory=set)  # its mirror pieces of blind requests
    disk: dict[int, bytes] = field(default_factory=dict)  # accepted copies, by digest
    provisional: set[int] = field(default_factory=set)
    timer: float | None = None  # when the driver calls tick() next
    mirror_open: bool = False
    stream: Flow | None = None  # the piece its mirror stream is on
    last: int = 0  # the last piece of the mirror request in flight
    fetching: range = range(0)  # what its stream is on, as the core's ReadMirrorPiece says
    kind: str = ""  # what the mirror stream is for: blind, split, web seed, list check
    told: dict[Peer, frozenset[int] | None] = field(default_factory=dict)  # None: everything
    lists_pending: set[Peer] = field(default_factory=set)
    requests: set[tuple[Peer, int]] = field(default_factory=set)
    banned: dict[Peer, bool] = field(default_factory=dict)  # peer -> lied
    outcome: str = ""  # "finished" (whole-file hash matched), or the scheduler's failure
    done_at: float = 0.0


class Crowd:
    def __init__(
        self,
        seed: int,
        *,
        ids: bool = True,
        liar: bool = False,
        liars: int = 1,
        broad: bool = False,
    ) -> None:
        """`liar`: `liars` of the nodes lie, about one piece each (the hardest to catch), or
        with `broad` about every piece they offer (as behind a tampering mirror)."""
        rng = random.Random(seed)  # the world; `ids` and `liar` do not change its draws
        self.seed = seed
        self.n = rng.randint(3, 8)
        self.p = rng.randint(6, 40)
        self.size = (self.p - 1) * PS + rng.randint(1, PS)
        self.mirror_rate = PS * rng.uniform(8.0, 20.0)  # bytes/s, all streams together
        self.upload_rate = PS * rng.uniform(5.0, 30.0)  # bytes/s per node, all uploads together
        self.slots = rng.choice([4, 16])  # concurrent uploads per node; beyond: 503 busy
        self.lookups = [rng.uniform(0.25, 1.0) for _ in range(self.n)]  # when peers are found
        liar_k = rng.randrange(self.n) if liar else -1
        liar_ks = {liar_k}
        if liar and liars > 1:  # more liars, drawn apart from the world's draws
            others = [k for k in range(self.n) if k != liar_k]
            liar_ks.update(random.Random(seed * 7 + 1).sample(others, min(liars, self.n) - 1))
        self.broad = broad
        self.true = [_digest(f"{seed} piece {i}") for i in range(self.p)]
        self.seed_text = str(seed)
        sha = _digest(f"{seed} file").hex()
        self.clock = ManualClock()
        self.nodes = []
        for k in range(self.n):
            node_id = hashlib.blake2b(f"{seed} node {k}".encode(), digest_size=20).digest()
            node_id = node_id if ids else b""
            rng_k = random.Random(seed * 100 + k)
            s = SwarmScheduler(
                sha,
                self.size,
                rng=rng_k,
                config=CONFIG,
                piece_size=PS,
                node=node_id,
            )
            peer = Peer(f"10.7.0.{k + 1}", 9978)
            self.nodes.append(Node(k, peer, node_id, s, liar=k in liar_ks))
        self.by_peer = {node.peer: node for node in self.nodes}
        self.flows: list[Flow] = []
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = 0
        self.trace: list[str] = []
        self.mirror_pieces: dict[str, int] = {}  # pieces the mirror started to send, by kind
        self.check_bytes = 0  # asked of the mirror by inquiries after whole-file mismatches
        self.given_up = 0  # of those, given up to a downloader first in line (less than half sent)
        self.lies_banned: list[tuple[int, BanPeer]] = []  # (by node, ban) of honest peers

    def bad(self, node: Node, index: int) -> bytes:
        """The digest of the bytes liar `node` serves for `index`."""
        return _digest(f"{self.seed_text} lie {node.k} {index}")

    def describe(self) -> str:
        liar = [n.k for n in self.nodes if n.liar]
        return (
            f"seed {self.seed}: {self.n} nodes, {self.p} pieces, mirror {self.mirror_rate:.0f}"
            f" B/s, upload {self.upload_rate:.0f} B/s, {self.slots} slots, liar {liar}"
        )

    def outcomes(self) -> str:
        return "; ".join(
            f"{n.k}: {n.outcome or 'running'} at {n.done_at:.2f}, {len(n.disk)}/{self.p} pieces"
            for n in self.nodes
        )

    # --- the world -------------------------------------------------------------------------

    def run(self) -> Crowd:
        for node in self.nodes:
            node.s.lookup_deadline_passed(
                now=self.clock.now()
            )  # the first lookup ran before anyone announced
            self.drain(node)
            others = [o.peer for o in self.nodes if o is not node]
            self.at(self.lookups[node.k], functools.partial(self.found, node, others))
        while any(not node.outcome for node in self.nodes):
            assert self.clock.now() < TIME_LIMIT, f"stalled: {self.outcomes()}"
            self.clock.advance(DT)
            while self.events and self.events[0][0] <= self.clock.now() + 1e-9:
                heapq.heappop(self.events)[2]()
            for node in self.nodes:
                self.maybe_yield(node)
            self.move_bytes()
            for node in self.nodes:
                if node.timer is not None and node.timer <= self.clock.now():
                    node.s.tick(now=self.clock.now())
                    self.drain(node)
        return self

    def at(self, delay: float, run: Callable[[], None]) -> None:
        self.seq += 1
        heapq.heappush(self.events, (self.clock.now() + delay, self.seq, run))

    def found(self, node: Node, peers: list[Peer]) -> None:
        if not node.outcome:
            node.s.peers_found(peers, now=self.clock.now())
            self.drain(node)

    def move_bytes(self) -> None:
        """Share each sender's rate equally among its flows for one step; deliver what is done."""
        senders: dict[int | None, list[Flow]] = {}
        for flow in self.flows:
            senders.setdefault(flow.source, []).append(flow)
        for source, flows in senders.items():
            rate = self.mirror_rate if source is None else self.upload_rate
            for flow in flows:
                flow.left -= rate * DT / len(flows)
        for flow in [f for f in self.flows if f.left <= 0]:
            if flow in self.flows:  # not cancelled by an earlier arrival of this step
                self.flows.remove(flow)
                self.arrive(flow)

    def arrive(self, flow: Flow) -> None:
        node, index = self.nodes[flow.to], flow.index
        if flow.audit is not None:
            node.s.audit_result(index, flow.audit.digest == self.true[index], now=self.clock.now())
        elif flow.check is not None:  # a liar's bytes differ from the mirror's in every block
            held = node.disk.get(index)
            node.s.check_result(
                flow.check, None if held is None else held == self.true[index], now=self.clock.now()
            )
        elif flow.source is None:  # a mirror piece: ask before the next one, as the driver does
            node.stream = None
            if node.kind == "blind":
                node.blind.add(index)
            node.s.piece_received(MIRROR, index, self.true[index], now=self.clock.now())
            if index == node.last:  # the next request (its window is the core's)
                self.mirror_request(node, index + 1)
            else:
                self.mirror_piece(node, index + 1)
        else:
            server = self.nodes[flow.source]
            node.requests.discard((server.peer, index))
            if index not in server.lies and index not in server.disk:
                # Retracted by the server while on its way (its author was convicted): the
                # server's answer ends short, which the driver reports as a failed piece.
                node.s.piece_failed(
                    server.peer, index, "cut short", misbehaved=False, now=self.clock.now()
                )
            else:
                digest = self.bad(server, index) if index in server.lies else server.disk[index]
                node.s.piece_received(server.peer, index, digest, now=self.clock.now())
        self.drain(node)

    def maybe_yield(self, node: Node) -> None:
        """As mirror_stream.py reports a mirror piece's progress while less than half of it has
        come: does the core give it up?"""
        flow = node.stream
        if (
            flow is None
            or flow.left <= PS / 2
            or node.s.mirror_piece_progress(flow.index, self.got(flow), now=self.clock.now())
            is None
        ):
            return
        self.flows.remove(flow)
        self.given_up += 1
        self.stop_stream(node)
        self.drain(node)

    def got(self, flow: Flow) -> int:
        start, end = piece_span(flow.index, self.size, PS)
        return int(end - start - flow.left)

    def mirror_request(self, node: Node, first: int) -> None:
        """The stream's next request: the window the core answers with, or the end."""
        window = node.s.mirror_stream_ready(first, now=self.clock.now())
        if isinstance(window, MirrorWindow):
            node.last = window.last
            self.mirror_piece(node, first)
        else:
            self.stop_stream(node)

    def mirror_piece(self, node: Node, index: int) -> None:
        """The next piece of the request, if the core goes on into it."""
        step = node.s.mirror_piece_starting(index, now=self.clock.now())
        if isinstance(step, ReadMirrorPiece):
            node.fetching = step.fetching
            node.stream = self.send(node, index, None)
            return
        if isinstance(step, GiveUpMirrorPiece):
            self.given_up += 1
        self.stop_stream(node)

    def stop_stream(self, node: Node) -> None:
        node.stream, node.mirror_open, node.fetching = None, False, range(0)
        node.s.mirror_stopped(None, now=self.clock.now())

    def send(self, node: Node, index: int, source: int | None) -> Flow:
        start, end = piece_span(index, self.size, PS)
        flow = Flow(node.k, index, end - start, source)
        self.flows.append(flow)
        if source is None:
            self.mirror_pieces[node.kind] = self.mirror_pieces.get(node.kind, 0) + 1
        return flow

    def drop_flows(self, node: Node, test: Callable[[Flow], bool]) -> None:
        self.flows = [f for f in self.flows if f.to != node.k or not test(f)]

    # --- what a downloader answers other downloaders (its peer server) ----------------------

    def answer_list(self, node: Node, peer: Peer) -> None:
        node.lists_pending.discard(peer)
        if node.outcome or peer in node.banned:
            return
        server = self.by_peer[peer]
        listed = server.s.corroborated_list()
        if server.outcome == "finished":
            node.told[peer] = None
            node.s.piece_list_received(
                peer, self.claimed(server, dict(enumerate(self.true))), None, now=self.clock.now()
            )
        elif server.outcome:  # its download failed: the partial file is gone
            node.s.piece_list_failed(peer, "404", misbehaved=False, now=self.clock.now())
        elif listed is not None:  # a corroborated list: every piece on disk
            have = frozenset(server.disk)
            node.told[peer] = have
            digests = dict(enumerate(listed.digests))
            node.s.piece_list_received(
                peer, self.claimed(server, digests), have, now=self.clock.now()
            )
        else:  # offers: the pieces it got from the mirror, and relays of others' offers
            offers = {i: d for i, d in sorted(server.disk.items()) if i not in server.provisional}
            if server.liar and self.broad:  # every piece it offers, as it offers them
                server.lies.update(offers)
            elif server.liar and not server.lies:  # where it is hardest to catch
                first = min((i for i in offers if i not in server.blind), default=None)
                server.lies.update(() if first is None else (first,))
            relayed = frozenset(server.provisional) if RELAYS else frozenset()
            offers.update((i, server.disk[i]) for i in relayed)
            # As mirror_stream.py tells it: the piece on its way, and the next one if the request
            # covers it and the stream goes on into it.
            fetching = server.fetching if server.stream is not None else range(0)
            node.told[peer] = frozenset(offers)
            node.s.piece_list_received(
                peer,
                self.claimed(server, offers),
                frozenset(offers),
                offers_only=True,
                fetching=fetching,
                node=server.node_id,
                relayed=relayed,
                now=self.clock.now(),
            )
        self.drain(node)

    def claimed(self, server: Node, digests: dict[int, bytes]) -> PieceList:
        """The list `server` sends; a liar's entry for its lie matches the bytes it serves."""
        entries = [digests.get(i, VOID) for i in range(self.p)]
        for index in server.lies:
            entries[index] = self.bad(server, index)
        return PieceList(self.size, tuple(entries), PS)

    def refused(self, node: Node, peer: Peer, index: int, busy: bool) -> None:
        if node.outcome or (peer, index) not in node.requests:
            return  # cancelled or banned meanwhile: the driver cancelled the task
        node.requests.discard((peer, index))
        if busy:
            node.s.piece_busy(peer, index, now=self.clock.now())
        else:
            node.s.piece_failed(peer, index, "404", misbehaved=False, now=self.clock.now())
        self.drain(node)

    # --- the driver ------------------------------------------------------------------------

    def drain(self, node: Node) -> None:
        """Perform the core's actions, then re-arm its one timer (download.py `run`)."""
        while actions := node.s.poll_actions():  # a stream that stops at once has some more
            for action in actions:
                self.trace.append(f"{self.clock.now():.2f} {node.k} {action!r}")
                self.perform(node, action)
        node.timer = node.s.next_deadline()

    def perform(self, node: Node, action: Action) -> None:
        if isinstance(action, RequestPieceList):
            if action.peer not in node.lists_pending:  # the driver runs one request per peer
                node.lists_pending.add(action.peer)
                self.at(LATENCY, functools.partial(self.answer_list, node, action.peer))
        elif isinstance(action, RequestPiece):
            self.request(node, action.peer, action.index)
        elif isinstance(action, StartMirror):
            assert not node.mirror_open, f"node {node.k}: a second mirror stream"
            node.mirror_open = True
            node.kind = self.kind(node, action.why)
            self.mirror_request(node, action.first)
        elif isinstance(action, AuditPiece):
            self.mirror_pieces["list check"] = self.mirror_pieces.get("list check", 0) + 1
            self.flows.append(Flow(node.k, action.index, action.end - action.start, None, action))
        elif isinstance(action, CheckPiece):
            self.check_bytes += action.end - action.start
            flow = Flow(node.k, action.index, action.end - action.start, None, check=action)
            self.flows.append(flow)
        elif isinstance(action, RetractPiece):
            del node.disk[action.index]
            node.provisional.discard(action.index)
        elif isinstance(action, ConfirmPiece):
            node.provisional.discard(action.index)
        elif isinstance(action, CancelPiece):
            node.requests.discard((action.peer, action.index))
            server = self.by_peer[action.peer].k
            self.drop_flows(node, lambda f: f.source == server and f.index == action.index)
        elif isinstance(action, AcceptPiece):
            assert action.index not in node.disk, f"node {node.k}: piece {action.index} twice"
            node.disk[action.index] = action.digest
            if action.provisional:
                node.provisional.add(action.index)
        elif isinstance(action, BanPeer):
            node.banned[action.peer] = action.lied
            if action.lied and not self.by_peer[action.peer].liar:
                self.lies_banned.append((node.k, action))
            node.requests = {r for r in node.requests if r[0] != action.peer}
            node.lists_pending.discard(action.peer)
            server = self.by_peer[action.peer].k
            self.drop_flows(node, lambda f: f.source == server)
        elif isinstance(action, Finished):
            assert len(node.disk) == self.p
            if all(node.disk[i] == self.true[i] for i in range(self.p)):
                node.outcome, node.done_at = "finished", self.clock.now()
                self.drop_flows(node, lambda f: True)
            else:  # the whole-file SHA256 does not match: the driver tells the core, whose
                node.s.whole_file_failed(
                    now=self.clock.now()
                )  # inquiry checks the pieces taken on offers
                self.drain(node)
        else:
            assert isinstance(action, Failed)
            node.outcome, node.done_at = action.reason, self.clock.now()
            self.drop_flows(node, lambda f: True)

    def request(self, node: Node, peer: Peer, index: int) -> None:
        told = node.told.get(peer, frozenset())
        assert told is None or index in told, (
            f"node {node.k} asked {peer} for piece {index}, which it never offered"
            f" (it said {sorted(told)})"
        )
        assert (peer, index) not in node.requests, f"node {node.k}: {peer} asked twice for {index}"
        node.requests.add((peer, index))
        server = self.by_peer[peer]
        if server.outcome and server.outcome != "finished":
            self.at(LATENCY, functools.partial(self.refused, node, peer, index, False))
        elif sum(f.source == server.k for f in self.flows) >= self.slots:
            self.at(LATENCY, functools.partial(self.refused, node, peer, index, True))
        else:
            self.send(node, index, server.k)

    @staticmethod
    def kind(node: Node, why: str) -> str:
        if not node.told:
            return "blind"  # no other downloader has answered yet: nothing to split with
        if why in WEB_SEED:
            return "web seed"
        return "list check" if why in LIST_CHECK else "split"

    # --- measures --------------------------------------------------------------------------

    def mirror_total(self) -> int:
        return sum(self.mirror_pieces.values())

    def time_bound(self) -> float:
        """Virtual seconds every honest downloader finishes in: 3 x (the mirror sending the file
        once at its full rate + 2 s for the lookups and one overdue timeout). Measured over 800
        runs (seeds 0-199, with and without ids and liar): at most 2.45 x (seed 38)."""
        return 3.0 * (self.size / self.mirror_rate + 2.0)


def _run(
    seed: int, *, ids: bool = True, liar: bool = False, liars: int = 1, broad: bool = False
) -> Crowd:
    crowd = Crowd(seed, ids=ids, liar=liar, liars=liars, broad=broad)
    try:
        return crowd.run()
    except AssertionError as exc:
        raise AssertionError(f"{crowd.describe()} ids={ids}: {exc}") from exc


HONEST_SEEDS = range(8)
# Chosen to cover: the liar's piece taken provisionally by every honest downloader (100, 103,
# 118), by some (105 and 110 without ids) or by none (101 without ids), a liar's list taken as
# corroborated and its piece accepted as final (114 with ids), honest peers banned as liars
# (103, 105, 110, 118).
LIAR_SEEDS = (100, 101, 103, 105, 110, 114, 118)
SPLIT_SEEDS = range(200, 212)


@pytest.mark.parametrize("ids", [True, False], ids=["ids", "no-ids"])
@pytest.mark.parametrize("seed", HONEST_SEEDS)
def test_an_honest_crowd_finishes_from_offers(seed: int, ids: bool) -> None:
    """Every downloader finishes in bounded virtual time, nobody is banned, nothing fails,
    and (checked on every RequestPiece) no downloader asks a peer for a piece it did not offer."""
    crowd = _run(seed, ids=ids)
    where = f"{crowd.describe()} ids={ids}: {crowd.outcomes()}"
    for node in crowd.nodes:
        assert node.outcome == "finished", where
        assert node.done_at <= crowd.time_bound(), where
        assert not node.banned, f"{where}: node {node.k} banned {node.banned}"
    # Peers really served: the crowd is not n mirror downloads side by side.
    assert crowd.mirror_total() < crowd.n * crowd.p, where


@pytest.mark.parametrize("ids", [True, False], ids=["ids", "no-ids"])
@pytest.mark.parametrize("seed", LIAR_SEEDS)
def test_a_liar_in_the_crowd_is_found_and_every_honest_downloader_finishes(
    seed: int, ids: bool
) -> None:
    """One downloader lies about one piece, where it is hardest to catch (its first mirror
    piece fetched after the others answered, so usually its own share), in its offers and
    later in its complete list, and serves wrong bytes that match its digest. An honest
    downloader that took the liar's piece fails its whole-file check, and its inquiry
    (swarm/inquiry.py) asks the mirror until the liar is convicted; the liar's pieces are
    retracted and fetched again. Every honest downloader finishes with the true file."""
    crowd = _run(seed, ids=ids, liar=True)
    where = f"{crowd.describe()} ids={ids}: {crowd.outcomes()}"
    liar = next(node for node in crowd.nodes if node.liar)
    assert liar.lies, f"{where}: the liar never lied"
    for node in (n for n in crowd.nodes if not n.liar):
        assert node.outcome == "finished", where
        assert all(node.disk[i] == crowd.true[i] for i in range(crowd.p)), where
        retracted = any(f" {node.k} RetractPiece" in line for line in crowd.trace)
        if retracted:
            assert node.banned.get(liar.peer) is True, f"{where}: {node.k} kept the liar"
    # Not checked, because the core does not hold it yet: that no honest peer is banned as a
    # liar (crowd.lies_banned). The liar's complete list counts as corroborated once it matches
    # a mirror piece at any other index; honest downloaders then hand it on as their
    # corroborated list, and honest offers or lists that disagree with it at the lie are banned
    # ("piece list contradicts the corroborated list", "offer for piece N contradicts").
    print(f"{crowd.describe()} ids={ids}: honest peers banned as liars: {crowd.lies_banned}")


COST_SEEDS = range(100, 140)


@pytest.mark.parametrize(
    ("liars", "broad", "median_bound", "failures"),
    [
        # Measured over seeds 100-139 (median, 90th percentile, max of liar / honest):
        pytest.param(1, False, 1.4, 2, id="one-liar-one-piece"),  # 1.32, 2.45, 2.98; 1 failed
        pytest.param(1, True, 1.2, 0, id="one-liar-every-piece"),  # 1.11, 1.24, 1.28
        pytest.param(2, False, 1.8, 2, id="two-liars-one-piece"),  # 1.71, 2.80, 3.53
        pytest.param(2, True, 1.4, 0, id="two-liars-every-piece"),  # 1.30, 1.62, 1.90
    ],
)
def test_liars_cost_the_crowd_little_mirror_traffic(
    liars: int, broad: bool, median_bound: float, failures: int
) -> None:
    """The same crowds with and without the liars (seeds 100-139, with node ids): the mirror's
    pieces (streams and checks) with the liars over those without, and the honest downloads
    that failed. A liar lying about one piece only is the costliest case for the inquiry
    (samples miss it; whole pieces find it); one lying about every piece it offers (behind a
    tampering mirror) is caught by the sampled blocks. A failure left (one crowd in 40 with one
    one-piece liar): the liar's piece accepted on its corroborated list rather than on an
    offer, which the inquiry does not reach."""
    ratios: list[float] = []
    failed = 0
    for seed in COST_SEEDS:
        honest, lied = _run(seed), _run(seed, liar=True, liars=liars, broad=broad)
        checks = lied.check_bytes / PS
        ratios.append((lied.mirror_total() + checks) / honest.mirror_total())
        failed += sum(n.outcome != "finished" for n in lied.nodes if not n.liar)
    median = statistics.median(ratios)
    print(f"liars / honest mirror pieces: median {median:.2f}, max {max(ratios):.2f}; {failed=}")
    assert median <= median_bound, ratios
    assert failed <= failures, failed


def test_rendezvous_ids_split_the_mirror_pieces() -> None:
    """The same crowds with and without node ids (no liar), mirror pieces by kind:
    - "blind": in mirror requests started before any other downloader answered. Every node
      takes piece 0 and goes on in order until its lookup finds the others (0.25-1 s here):
      what the DHT delay costs, which the split cannot help (without ids such a request goes
      on through whatever nobody offers, so it counts a few more).
    - "web seed": copies of pieces overdue at (or refused as busy by) slow uploaders.
    - "split": the rest, the pieces the split (or the random pick) decides.
    With ids, the split pieces stay at most 1.5 x P per seed. (Measured over seeds 0-199
    while a mirror request claimed the next piece in any case: median 0.89 P, at most
    1.375 P; that claim kept an owner away from its own piece after the claiming stream had
    stopped. The mirror stream now claims the next piece only when its stream means to go on into
    it.) In totals over seeds 200-211: median 1.44 P with ids, 2.02 P without (random picks)."""
    ratios: dict[bool, list[float]] = {True: [], False: []}  # mirror pieces / P, by ids
    for seed in SPLIT_SEEDS:
        crowds = {ids: _run(seed, ids=ids) for ids in (True, False)}
        for ids, crowd in crowds.items():
            ratios[ids].append(crowd.mirror_total() / crowd.p)
            print(f"{crowd.describe()} ids={ids}: mirror pieces {crowd.mirror_pieces}")
        split = crowds[True].mirror_pieces.get("split", 0)
        assert split <= 1.5 * crowds[True].p, crowds[True].describe()
    with_ids, random_picks = statistics.median(ratios[True]), statistics.median(ratios[False])
    print(f"median mirror pieces: {with_ids:.2f} P with ids, {random_picks:.2f} P without")
    assert with_ids <= 0.85 * random_picks, ratios


def test_the_same_seed_gives_the_same_trace() -> None:
    first, again = _run(104, liar=True), _run(104, liar=True)
    assert len(first.trace) > 100
    for event, (a, b) in enumerate(itertools.zip_longest(first.trace, again.trace)):
        assert a == b, f"seed 104: the second run diverged at action {event}: {a} != {b}"
    assert first.trace != _run(105, liar=True).trace
