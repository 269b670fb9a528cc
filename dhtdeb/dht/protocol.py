"""One DHT node's datagram endpoint: RPC bookkeeping and the request handlers.

Owns: every datagram in and out of the node. Trusts: the UDP source address of a datagram as far as
a token or a reply to our own random message id proves it, and nothing in a datagram's body.

Built on kademlia's `KademliaProtocol` (a subclass, so `Server`, the crawlers and the routing table
keep working with it), but rpcudp's layer underneath is replaced, not extended: rpcudp parses each
datagram in a fire-and-forget task (a malformed one becomes "Task exception was never retrieved"),
hard-wires a 5 s timeout, turns any attribute into a remote call (`__getattr__`), answers with
`(ok, value)` tuples, matches replies by message id alone (any address can answer), and reads the
event loop's clock and `os.urandom` directly. Here a datagram is parsed synchronously by `wire`,
counted and dropped when malformed, rate limited per source, and replies are only accepted from the
address the request went to. Replies to an address that has not proven itself (not a routing
contact, no valid token) are cut to `amplification` times the request's size.

Batches: get_peers and announce_peer calls to one address in one loop turn share a datagram
(batches.py); a get_peers reply answers as many keys as fit (replies.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kademlia.node import Node
from kademlia.protocol import KademliaProtocol

from dhtdeb.clock import Clock
from dhtdeb.dht.batches import KeyBatches
from dhtdeb.dht.dial import Dials
from dhtdeb.dht.guards import QuietLog, SourceLimiter, WriteTokens, source_key
from dhtdeb.dht.peer_store import PeerStore
from dhtdeb.dht.reachability import SILENT_WINDOW, Reachability
from dhtdeb.dht.replies import Fitted, fit_peers_reply, fit_reply, key_answers
from dhtdeb.dht.routing import DhtRoutingTable
from dhtdeb.dht.wire import (
    MAX_DATAGRAM,
    Address,
    Contact,
    Reply,
    Request,
    address_size,
    decode_datagram,
    encode_bits,
    encode_request,
)
from dhtdeb.errors import RemoteProtocolError

log = logging.getLogger("dhtdeb.dht")

EXTRA_KEY_COST = 0.25  # of a request, for each key a get_peers reply answers beyond the first
# A lookup skips for SILENT_FOR seconds an address that let SILENT_AFTER requests in a row time
# out with nothing heard from it since (one timeout may be a busy node: a classroom's machines
# are all busy at once).
SILENT_FOR = 60.0
SILENT_AFTER = 2


@dataclass(frozen=True)
class DhtTuning:
    """Every knob of the DHT, with the defaults used in production."""

    ksize: int = 8  # BEP 5's bucket size: replies stay small
    alpha: int = 3
    rpc_timeout: float = 1.0  # a request is dead after this
    slow_after: float = 0.25  # a request this late stops holding a lookup slot
    enough_peers: int = 50  # find_peers stops once this many peers are known
    # Keys held for others. In a fleet of n machines every key lands on min(n, k) of them: 50
    # machines sharing Debian's most installed ~20k packages put ~3k keys on each.
    max_keys: int = 20_000
    max_peers_per_key: int = 500
    peer_ttl: float = 45 * 60.0
    reannounce_interval: float = 30 * 60.0
    reannounce_jitter: float = 0.2  # re-announce in [interval*(1-j), interval]
    # Keys re-announced per maintenance tick (a minute): each key every 24-30 min, so a node
    # can keep up to ~7,000 keys announced (a volunteer seeding part of the archive).
    reannounce_batch: int = 240
    token_rotation: float = 300.0
    remote_token_max_age: float = 240.0
    amplification: int = 3
    max_reply: int = 1200  # one datagram that crosses any path unfragmented
    # Requests per second per source, and the burst: a fleet host that just fetched an upgrade
    # (hundreds of files) looks up and announces them within seconds, in batches (see
    # `Request.cost`); a flood of single requests from one address still stops at the rate.
    request_rate: float = 50.0
    request_burst: float = 250.0
    # Peers in a one-key get_peers reply (a random few of those stored), before trimming to
    # max_reply. A lookup hears from several nodes that store the key, each with its own draw,
    # so a download still learns of dozens. 40 (a full datagram) gave the same offload and
    # download times in `dhtdeb sim scale` at 300 and 1,000 nodes, with 9 % more CPU and 17 %
    # more DHT bytes (docs/simulation.md).
    peers_per_key: int = 16
    peers_per_batched_key: int = 8  # in a reply to several keys: a random few for each
    max_outstanding: int = 512
    max_probes: int = 16  # verification pings of unknown requesters in flight
    # A contact heard from this lately is "good" (BEP 5): not pinged to make room for another.
    good_for: float = 15 * 60.0
    bucket_refresh: float = 15 * 60.0
    maintenance_interval: float = 60.0
    save_interval: float = 600.0
    # Keys whose nearest nodes are remembered after a lookup (nearest.py): announces go
    # straight to them while their tokens are young, later lookups of the key start there.
    remembered_keys: int = 4096
    remembered_for: float = 3600.0


class DatagramTransport(Protocol):
    """What the node needs of a socket (asyncio's DatagramTransport, or an in-memory one)."""

    def sendto(self, data: bytes, addr: Address) -> None: ...

    def close(self) -> None: ...


@dataclass
class _Pending:
    future: asyncio.Future[Reply | None]  # None: timed out
    address: Address


def _expire(future: asyncio.Future[Reply | None]) -> None:
    if not future.done():
        future.set_result(None)


class DhtProtocol(KademliaProtocol):  # type: ignore[misc]
    def __init__(
        self,
        source_node: Node,
        storage: PeerStore,
        tuning: DhtTuning,
        *,
        clock: Clock,
        rng: random.Random,
        family: socket.AddressFamily,
        allow_loopback: bool,
    ) -> None:
        super().__init__(source_node, storage, tuning.ksize)
        self.tuning = tuning
        self.clock = clock
        self.rng = rng
        self.family = family
        self.allow_loopback = allow_loopback
        self.router = DhtRoutingTable(
            source_node,
            tuning.ksize,
            clock,
            family,
            allow_loopback=allow_loopback,
            on_bucket_full=self._recheck,
            good_for=tuning.good_for,
        )
        self._wait_timeout = tuning.rpc_timeout
        self._outstanding: dict[bytes, _Pending] = {}
        self.transport: DatagramTransport | None = None
        self.tokens = WriteTokens(clock, rng, tuning.token_rotation)
        self.limiter = SourceLimiter(clock, rate=tuning.request_rate, burst=tuning.request_burst)
        self.quiet = QuietLog(log, clock)
        self.counters: Counter[str] = Counter()
        self._remote_tokens: OrderedDict[Address, tuple[bytes, float]] = OrderedDict()
        self._probing: set[Address] = set()
        self.batches = KeyBatches(self)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.on_contact: Callable[[], None] | None = None  # tests wait on routing changes
        # Called when the routing table gains its first contact (the node was alone).
        self.on_joined: Callable[[], None] | None = None
        self._alone = True
        # Addresses that let a request of ours time out lately: lookups skip them for a while
        # (a dead node stays in the tables of nodes that never ask it, which keep handing it out).
        self._silent: OrderedDict[Address, tuple[int, float]] = OrderedDict()
        self.reachability = Reachability()
        self.dials = Dials(self)

    def __getattr__(self, name: str) -> Any:
        # rpcudp turns any unknown attribute into a remote call; a typo must stay a typo
        raise AttributeError(name)

    # -- transport side ----------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable and friends: the RPC timeout deals with the consequence
        self.counters["socket_errors"] += 1

    def _send(self, data: bytes, address: Address) -> None:
        if self.transport is None:
            return
        self.reachability.sent(address, self.clock.now())
        self.counters["bytes_sent"] += len(data)
        self.counters["datagrams_sent"] += 1
        try:
            self.transport.sendto(data, address)
        except OSError:
            self.counters["socket_errors"] += 1

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.counters["bytes_received"] += len(data)
        self.counters["datagrams_received"] += 1
        try:
            address: Address = (str(addr[0]), int(addr[1]))
            if self._silent:
                self._silent.pop(address, None)
            self._handle_datagram(data, address)
        except Exception as exc:  # a bug must not take the socket down, nor log per packet
            self.counters["internal_errors"] += 1
            self.quiet.warn("internal", "DHT: internal error on a datagram: %r", exc)

    def _handle_datagram(self, data: bytes, address: Address) -> None:
        try:
            message = decode_datagram(data, self.family)
        except RemoteProtocolError as exc:
            self.counters["malformed"] += 1
            self.quiet.warn("malformed", "DHT: malformed datagram from %s: %s", address, exc)
            return
        if isinstance(message, Reply):
            self._accept_reply(message, address)
            return
        if not self.limiter.allow(source_key(address, self.allow_loopback)):
            self.counters["rate_limited"] += 1
            self.quiet.warn("rate", "DHT: rate limiting requests from %s", address)
            return
        self._accept_request(message, address, len(data))

    def _accept_reply(self, reply: Reply, address: Address) -> None:
        pending = self._outstanding.get(reply.msgid)
        if pending is None or pending.address != address:
            self.counters["unexpected_replies"] += 1
            return
        if not pending.future.done():
            pending.future.set_result(reply)

    # -- serving requests --------------------------------------------------------------------
    def _accept_request(self, request: Request, address: Address, size: int) -> None:
        self.counters[f"requests_{request.method}"] += 1
        if self.reachability.request_from(address, self.clock.now()):
            self.dials.proof.set()
        if len(request.keys) > 1:
            self.counters["batched_keys"] += len(request.keys)
        body: dict[str, Any] = {"id": self.source_node.id}
        sender = Node(request.node_id, address[0], address[1])
        proven = self.is_proven(address, request)
        limit = self.tuning.max_reply if proven else self.tuning.amplification * size
        if request.method == "announce_peer":
            if self.tokens.check(request.token, address):
                stored = [self.storage.add(key, address, request.node_id) for key in request.keys]
                body["ok"] = all(stored)
                if len(stored) > 1:
                    body["stored"] = encode_bits(stored)
                self.counters["announces_stored"] += sum(stored)
                self.counters["announces_dropped"] += len(stored) - sum(stored)
            else:
                body["ok"] = False
                self.counters["bad_tokens"] += 1
            self.send_reply(request.msgid, body, [], address, limit)
        elif request.method == "dial_back":
            self.dials.serve_dial_back(request, address, limit)
        elif request.method == "dial":
            self.dials.serve_dial(request, address, limit)
        elif request.method == "ping":
            body["token"] = self.tokens.issue(address)
            self.send_reply(request.msgid, body, [], address, limit)
        elif request.method == "find_node":
            assert request.target is not None
            body["token"] = self.tokens.issue(address)
            self.send_reply(
                request.msgid, body, self._nearest(request.target, sender), address, limit
            )
        elif request.method == "get_peers":
            body["token"] = self.tokens.issue(address)
            # An unproven requester gets one key answered: its reply is small anyway.
            keys = request.keys if proven else request.keys[:1]
            answers = key_answers(
                keys,
                lambda key: self._nearest(key, sender),
                self.storage.entries,
                family=self.family,
                limit=min(limit, MAX_DATAGRAM),
                peers_per_key=self.tuning.peers_per_key,
                peers_per_batched_key=self.tuning.peers_per_batched_key,
            )
            if len(answers) > 1:
                self.limiter.charge(
                    source_key(address, self.allow_loopback),
                    EXTRA_KEY_COST * (len(answers) - 1),
                )
            self._send_fitted(
                fit_peers_reply(request.msgid, body, answers, self.family, limit), address
            )
        if not request.read_only:  # nobody could reach it unasked: kept out of the table
            self._consider_sender(sender)

    def _nearest(self, target: bytes, sender: Node) -> list[Contact]:
        return [
            Contact(n.id, n.ip, n.port)
            for n in self.router.find_neighbors(Node(target), exclude=sender)
        ]

    def is_proven(self, address: Address, request: Request) -> bool:
        if request.method != "announce_peer" and self.tokens.check(request.token, address):
            return True
        known = self.router.find(request.node_id)
        return known is not None and (known.ip, known.port) == address

    def send_reply(
        self,
        msgid: bytes,
        body: dict[str, Any],
        nodes: list[Contact],
        address: Address,
        limit: int,
    ) -> None:
        """Send a ping, find_node, announce_peer or dial reply cut to `limit` (replies.py)."""
        self._send_fitted(fit_reply(msgid, body, nodes, self.family, limit), address)

    def _send_fitted(self, fitted: Fitted, address: Address) -> None:
        self.counters["replies_trimmed"] += fitted.trimmed
        if fitted.data is None:
            self.counters["replies_refused"] += 1
        else:
            self._send(fitted.data, address)

    def _consider_sender(self, sender: Node) -> None:
        """A requester is only added once it answers a ping of ours from the same address.

        A known id keeps its address against a claimant elsewhere, but only while it answers
        there: a node that moved (restarted on another port) would otherwise stay listed at a
        dead address, handed out in every reply and never asked by us. So the known address is
        pinged; silent, it is evicted (`settle`) and the requester is verified in its place.
        """
        known = self.router.find(sender.id)
        if known is not None:
            if (known.ip, known.port) == (sender.ip, sender.port):
                self.router.add_contact(known)  # refresh its place in the bucket
            else:
                self._recheck(known, moved_to=sender)
            return
        address = (sender.ip, sender.port)
        if (
            address in self._probing
            or len(self._probing) >= self.tuning.max_probes
            or not self.router.admissible(sender)
            or not self.router.has_room(sender)
        ):
            return
        self._probing.add(address)
        self.spawn(self._probe(sender, address))

    async def _probe(self, node: Node, address: Address, moved_to: Node | None = None) -> None:
        try:
            answered = await self.call_ping(node) is not None
        finally:
            self._probing.discard(address)
        if not answered and moved_to is not None and self.router.admissible(moved_to):
            await self.call_ping(moved_to)

    def _recheck(self, contact: Node, moved_to: Node | None = None) -> None:
        """Ping a contact (a full bucket's head, or a known id seen at another address)."""
        address = (contact.ip, contact.port)
        if address in self._probing or len(self._probing) >= self.tuning.max_probes:
            return
        self._probing.add(address)
        self.spawn(self._probe(contact, address, moved_to))

    @property
    def closing(self) -> bool:
        return self._closing

    def spawn(self, coro: Any) -> None:
        if self._closing:
            coro.close()
            return
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pending in self._outstanding.values():
            pending.future.cancel()
        self.batches.close()

    # -- calling others ----------------------------------------------------------------------
    async def request(
        self,
        address: Address,
        method: str,
        target: bytes | None = None,
        token: bytes | None = None,
        *,
        expect_reply: int = 0,
        patience: float | None = None,
    ) -> Reply | None:
        """Send one request; the reply, or None after `patience` seconds (the RPC timeout
        unless given). Never raises for the peer."""
        sent = self._send_request(address, method, target, token, expect_reply, patience)
        if sent is None:
            return None
        msgid, future, expiry = sent
        try:
            reply = await future
        finally:
            expiry.cancel()
            del self._outstanding[msgid]
        return self._replied(address, method, reply)

    def request_then(
        self,
        address: Address,
        method: str,
        target: bytes | None,
        token: bytes | None,
        then: Callable[[Reply | None], None],
        closed: Callable[[], None],
        *,
        expect_reply: int = 0,
        wanted: Callable[[], bool] | None = None,
    ) -> None:
        """`request` for a caller that goes on in a callback: `then` gets what `request` would
        return, or `closed` is called when the node closes first; either from the event loop,
        never before this returns. No task: the batched calls of every lookup go this way.
        Once `wanted` says no, the answer is not read (as if `request` had been cancelled) and
        neither callback is called."""
        sent = self._send_request(address, method, target, token, expect_reply, None)
        if sent is None:
            asyncio.get_running_loop().call_soon(then, None)
            return
        msgid, future, expiry = sent

        def done(future: asyncio.Future[Reply | None]) -> None:
            expiry.cancel()
            del self._outstanding[msgid]
            if future.cancelled():
                closed()
            elif wanted is None or wanted():
                then(self._replied(address, method, future.result()))

        future.add_done_callback(done)

    def _send_request(
        self,
        address: Address,
        method: str,
        target: bytes | None,
        token: bytes | None,
        expect_reply: int,
        patience: float | None,
    ) -> tuple[bytes, asyncio.Future[Reply | None], asyncio.TimerHandle] | None:
        """Send a request: its message id, the future its reply (or None on timeout) resolves,
        and the timer of that timeout; None when refused. The caller cancels the timer and
        removes the message id from `_outstanding` once the future is done."""
        if self.transport is None or len(self._outstanding) >= self.tuning.max_outstanding:
            self.counters["requests_refused"] += 1
            return None
        msgid = self.rng.randbytes(20)
        my_id = self.source_node.id
        padding = 0
        # Found unreachable unasked: others should not list this node (BEP 43's read-only).
        hidden = self.reachability.unreachable
        if method in ("find_node", "get_peers") and token is None:
            token = self.remote_token(address)
        if token is None and expect_reply:
            # Like QUIC's padded Initial: an unproven requester pays for the reply it wants.
            bare = len(encode_request(msgid, method, my_id, target, None, 0, read_only=hidden))
            padding = max(0, math.ceil(expect_reply / self.tuning.amplification) - bare)
        data = encode_request(msgid, method, my_id, target, token, padding, read_only=hidden)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply | None] = loop.create_future()
        self._outstanding[msgid] = _Pending(future, address)
        self._send(data, address)
        # The timeout resolves the future with None (one timer, no task cancellation: this is
        # on the path of every datagram sent, and asyncio.timeout costs several times as much).
        wait = self.tuning.rpc_timeout if patience is None else patience
        return msgid, future, loop.call_at(loop.time() + wait, _expire, future)

    def _replied(self, address: Address, method: str, reply: Reply | None) -> Reply | None:
        """The bookkeeping of an answered or timed-out request; its reply."""
        if reply is None:
            self.counters["timeouts"] += 1
            count, _ = self._silent.pop(address, (0, 0.0))
            self._silent[address] = (count + 1, self.clock.now())
            while len(self._silent) > 1024:
                self._silent.popitem(last=False)
            log.debug("DHT: %s to %s:%d timed out", method, *address)
            return None
        if reply.token is not None:
            self._remember_token(address, reply.token)
        return reply

    def looks_unreachable(self) -> bool:
        """No stranger has asked this node anything lately although it knows enough of the
        network to be asked: behind NAT (reachability.py). Logged when the verdict changes."""
        before = self.reachability.unreachable
        verdict = self.reachability.judge(self.clock.now(), len(self.router))
        self.verdict_changed(
            before,
            f"no node has contacted this one unasked for {SILENT_WINDOW / 60:.0f} minutes"
            f" although {len(self.router)} are known"
            if verdict
            else "contacted unasked again",
        )
        return verdict

    def verdict_changed(self, before: bool, cause: str) -> None:
        """The reachability verdict may have changed from `before`, for `cause` (silence,
        reachability.py, or a dial test, dial.py): counted and logged once when it did."""
        verdict = self.reachability.unreachable
        if verdict == before:
            return
        self.counters["reachability_changes"] += 1
        if verdict:
            log.warning(
                "DHT: %s: it looks unreachable from outside (NAT, or a firewall on the DHT's"
                " UDP and the peers' TCP port); it announces nothing and asks read-only until"
                " a stranger's request or a later test reaches it",
                cause,
            )
        else:
            log.info("DHT: %s: announcing files again", cause)

    def recently_silent(self, address: Address) -> bool:
        """SILENT_AFTER requests of ours to `address` in a row timed out, the last within
        SILENT_FOR, and nothing came from it since: a lookup does not wait on it again."""
        count, since = self._silent.get(address, (0, 0.0))
        return count >= SILENT_AFTER and self.clock.now() - since < SILENT_FOR

    def remote_token(self, address: Address) -> bytes | None:
        """The token `address` gave us, if it is young enough to announce with."""
        held = self._remote_tokens.get(address)
        if held is None:
            return None
        token, received = held
        if self.clock.now() - received > self.tuning.remote_token_max_age:
            del self._remote_tokens[address]
            return None
        return token

    def _remember_token(self, address: Address, token: bytes) -> None:
        self._remote_tokens.pop(address, None)
        self._remote_tokens[address] = (token, self.clock.now())
        while len(self._remote_tokens) > 4096:
            self._remote_tokens.popitem(last=False)

    def settle(self, node: Node, reply: Reply | None) -> Reply | None:
        """Routing consequences of a call: responders are added, the silent are evicted."""
        if reply is None:
            self.router.remove_contact(node)
            self._alone = not len(self.router)
            return None
        if reply.node_id != node.id:
            # another node now lives at that address (a restart without state)
            self.router.remove_contact(node)
        self._add_contact(Node(reply.node_id, node.ip, node.port))
        return reply

    def _add_contact(self, node: Node) -> None:
        self.router.add_contact(node)
        if self.on_contact is not None:
            self.on_contact()
        if self._alone and len(self.router):
            self._alone = False
            if self.on_joined is not None:
                self.on_joined()

    async def ping_address(self, address: Address) -> Reply | None:
        """Ping an address whose node id is unknown (bootstrap, LAN, saved contacts)."""
        reply = await self.request(address, "ping")
        if reply is not None:
            self._add_contact(Node(reply.node_id, address[0], address[1]))
        return reply

    async def call_ping(self, node: Node) -> Reply | None:
        return self.settle(node, await self.request((node.ip, node.port), "ping"))

    async def call_find_node(self, node: Node, target: Node) -> Reply | None:
        full = self.tuning.ksize * (22 + address_size(self.family)) + 96
        reply = await self.request((node.ip, node.port), "find_node", target.id, expect_reply=full)
        return self.settle(node, reply)

    async def call_get_peers(self, node: Node, key: bytes) -> Reply | None:
        """A get_peers call for one key; calls to one address in one loop turn share a datagram
        once the address gave us a token."""
        return await self.get_peers_soon(node, key)

    def get_peers_soon(self, node: Node, key: bytes) -> asyncio.Future[Reply | None]:
        """`call_get_peers` as a future, without a task (a lookup makes many calls): cancelling
        it gives up waiting, not the request."""
        address = (node.ip, node.port)
        if self.remote_token(address) is not None:
            return self.batches.waiter("get_peers", node, key, None)
        result: asyncio.Future[Reply | None] = asyncio.get_running_loop().create_future()

        def then(reply: Reply | None) -> None:
            settled = self.settle(node, reply)
            if not result.done():
                result.set_result(None if settled is None else settled.for_key(0))

        def closed() -> None:
            result.cancel()

        def wanted() -> bool:  # a lookup that gave up does not read the reply (nor its token)
            return not result.cancelled()

        # Without a token, pay for a reply of k contacts or 24 peers (a node holding peers
        # answers with peers first); the token in that reply earns a full reply next time.
        full = (self.tuning.ksize + 16) * (22 + address_size(self.family))
        self.request_then(
            address, "get_peers", key, None, then, closed, expect_reply=full, wanted=wanted
        )
        return result

    async def call_announce(self, node: Node, key: bytes, token: bytes) -> bool:
        reply = await self.batches.call("announce_peer", node, key, token)
        return reply is not None and reply.ok

    async def call_store(self, node: Node, key: bytes, value: object) -> bool:
        raise NotImplementedError("dhtdeb stores peer lists through announce_peer")

    async def call_find_value(self, node: Node, target: Node) -> Reply | None:
        return await self.call_get_peers(node, target.id)

    def welcome_if_new(self, node: Node) -> None:
        # Stock kademlia pushes its values to every new contact; peer lists are kept alive by
        # their announcers, so a new contact only joins the table (and only after answering).
        self.router.add_contact(node)

    def get_refresh_ids(self) -> list[bytes]:
        ids = []
        for bucket in self.router.lonely_buckets(self.tuning.bucket_refresh):
            ids.append(self.rng.randint(*bucket.range).to_bytes(20, "big"))
        return ids
