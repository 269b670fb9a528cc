"""Dial-back tests: whether a node this one never wrote to can reach it.

Owns: the three parts of a test (wire.py, `dial_back` and `dial`): running one (this node asks
helpers, waits for a dialer's ping), relaying one (a helper asks dialers among its contacts and
names those that agreed in its reply), and dialing (a ping to the address a helper gave).
Trusts: a `dial_back` only from an address that brought back this node's token (it receives
there), and a `dial` only from a helper that proves its address likewise or is a contact of
this node's routing table at that address (nobody can hide behind a forged source). A dialer
pings a host at most once per `DIAL_SPACING`, never a loopback, multicast or unspecified
address (unless the node allows loopback peers), and has at most `MAX_DIALS` pings in flight,
so a test cannot be aimed at a victim nor fill the node's own request slots. The verdict is
reachability.py's: unreachable only when two helpers named a dialer whose ping would have
proved it and nothing came (one lost datagram, or one lying helper naming made-up dialers,
must not decide for long: one helper's silent dialers make the node hold its announces and test
again after a minute).

Why: a machine behind NAT that announces files sends every downloader that finds it into a
connect timeout and then to the mirror; the machine cannot tell from the inside. Silence
(reachability.py) tells it after ten minutes, when its upgrade has long been announced. A test
tells it within a few round trips of starting, before its first announce (`DhtNode` holds the
announces until the first test is over).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import OrderedDict
from typing import TYPE_CHECKING

from dhtdeb.dht.wire import Address, Contact, Request, pack_address

if TYPE_CHECKING:
    from kademlia.node import Node

    from dhtdeb.dht.protocol import DhtProtocol

HELPERS = 3  # helpers asked at once: one lost datagram or unhelpful helper must not decide
# Rounds of helpers while no named dialer could prove anything (this node wrote to it lately:
# right after joining, a node has written to a good part of a small network).
ROUNDS = 3
WAIT = 2.0  # seconds, after the helpers' replies, for a dialer's ping to arrive
RETEST = 600.0  # seconds between tests while this node is taken to be unreachable
# After a test that could not tell (a young network where this node has written to everyone):
# again after this many seconds, doubling each time up to RETEST.
RETRY = 60.0
DIAL_SPACING = 60.0  # seconds before a dialer pings the same host again
MAX_RELAYS = 16  # dial_back requests a helper relays at once
MAX_DIALS = 16  # pings of dial requests in flight at once
SILENT_HELPERS = 2  # helpers whose named dialers stayed silent before the verdict
DIALERS = 3  # contacts a helper asks to dial, at once; its reply names those that agreed
_DIALED_MAX = 1024  # hosts a dialer remembers having pinged


class Dials:
    def __init__(self, protocol: DhtProtocol) -> None:
        self._protocol = protocol
        self._dialed: OrderedDict[str, float] = OrderedDict()  # host -> when it was pinged
        self._relaying: set[Address] = set()
        self.proof = asyncio.Event()  # set when a stranger (a dialer, say) asks this node
        self.last_test: float | None = None
        self._untold = 0  # tests in a row that could not tell
        self._running = False
        self._pinging = 0  # dial pings in flight
        self._suspected = False  # the last verdict rests on one helper's dialers

    # -- running a test ---------------------------------------------------------------------

    async def test(self) -> bool | None:
        """Ask contacts that gave us a token for dial-backs, HELPERS at a time; True: some
        stranger or dialer reached this node, False: nothing did although a helper named a
        dialer whose ping would have proved it (SILENT_HELPERS of them: a verdict; fewer: a
        suspicion, tested again after RETRY), None: the test could not tell (no helper, no
        such dialer named, or a test is already running)."""
        if self._running:
            return None
        self._running = True
        try:
            return await self._test()
        finally:
            self._running = False

    async def _test(self) -> bool | None:
        protocol = self._protocol
        reachability = protocol.reachability
        started = protocol.clock.now()
        self.last_test = started
        helpers = [
            (contact, token)
            for contact in protocol.router.contacts()
            if (token := protocol.remote_token((contact.ip, contact.port))) is not None
        ]
        protocol.rng.shuffle(helpers)
        if not helpers:
            self._untold += 1
            return None
        self.proof.clear()
        telling: set[bytes] = set()  # helpers that named a dialer whose ping would prove it
        heard = False
        for round_ in range(ROUNDS):
            picks = {(round_ * HELPERS + i) % len(helpers) for i in range(HELPERS)}
            telling |= await self._ask([helpers[i] for i in sorted(picks)])
            heard = reachability.proven_since(started)
            if heard or len(telling) >= SILENT_HELPERS:
                break
        if not heard and telling:
            try:
                async with asyncio.timeout(WAIT):
                    await self.proof.wait()
            except TimeoutError:
                pass
            heard = reachability.proven_since(started)
        if not heard and not telling:
            protocol.counters["dial_tests_inconclusive"] += 1
            self._untold += 1
            return None
        self._untold = 0
        # One helper's silent dialers are a suspicion, not proof (a lost ping, a lying helper):
        # the node withholds its announces as if unreachable, but tests again after RETRY.
        self._suspected = not heard and len(telling) < SILENT_HELPERS
        before = reachability.unreachable
        reachability.dial_test_ended(protocol.clock.now(), heard=heard)
        protocol.counters["dial_tests_reachable" if heard else "dial_tests_unreachable"] += 1
        protocol.verdict_changed(
            before,
            "a reachability test reached this node"
            if heard
            else "a reachability test found that nodes this one never wrote to cannot reach it",
        )
        return heard

    async def _ask(self, helpers: list[tuple[Node, bytes]]) -> set[bytes]:
        """One round: dial-backs asked of `helpers`; the ids of those that named a dialer whose
        ping would prove something."""
        protocol = self._protocol
        patience = 2 * protocol.tuning.rpc_timeout  # the helper waits for its dialers first
        replies = await asyncio.gather(
            *(
                protocol.request((c.ip, c.port), "dial_back", b"", token, patience=patience)
                for c, token in helpers
            )
        )
        now = protocol.clock.now()
        return {
            helper.id
            for (helper, _), reply in zip(helpers, replies, strict=True)
            if reply is not None
            and reply.ok
            and any(
                protocol.reachability.dial_expected((c.host, c.port), now)
                for c in reply.nodes[:DIALERS]
            )
        }

    def due(self, now: float) -> bool:
        """Whether to test again: this node is taken to be unreachable and its last test is
        RETEST old, or its last tests could not tell and the pause after them (RETRY, doubled
        each time) is over. A node found reachable hears strangers anyway."""
        if self.last_test is None:
            return True
        if self._protocol.reachability.unreachable:
            return now - self.last_test >= (RETRY if self._suspected else RETEST)
        if self._untold:
            pause: float = min(RETEST, RETRY * 2 ** (self._untold - 1))
            return now - self.last_test >= pause
        return False

    # -- helping another node's test ----------------------------------------------------------

    def serve_dial_back(self, request: Request, address: Address, limit: int) -> None:
        """A node asks to be dialed: contacts of ours ping it; the reply names those that agreed
        (or says ok: False when there is nobody to ask, or the requester is not proven)."""
        protocol = self._protocol
        relayable = (
            protocol.tokens.check(request.token, address)
            and address not in self._relaying
            and len(self._relaying) < MAX_RELAYS
        )
        dialers = self._pick_dialers(address) if relayable else []
        if not dialers:
            protocol.send_reply(
                request.msgid, {"id": protocol.source_node.id, "ok": False}, [], address, limit
            )
            return
        self._relaying.add(address)
        protocol.spawn(self._relay(request, address, dialers, limit))

    def _pick_dialers(self, address: Address) -> list[tuple[Node, bytes | None]]:
        """DIALERS contacts on other hosts than the requester's (a dialer on its host proves
        nothing), with the token each gave us if any (a dialer dials only for a helper that
        proves its address: by that token, or by being in the dialer's routing table). Several:
        a contact behind NAT that has not written to us lately never gets the request."""
        protocol = self._protocol
        others = [c for c in protocol.router.contacts() if c.ip != address[0]]
        picked = protocol.rng.sample(others, min(DIALERS, len(others)))
        return [(c, protocol.remote_token((c.ip, c.port))) for c in picked]

    async def _relay(
        self,
        request: Request,
        address: Address,
        dialers: list[tuple[Node, bytes | None]],
        limit: int,
    ) -> None:
        protocol = self._protocol
        target = pack_address(address[0], address[1], protocol.family)
        try:
            replies = await asyncio.gather(
                *(protocol.request((d.ip, d.port), "dial", target, token) for d, token in dialers)
            )
        finally:
            self._relaying.discard(address)
        named = [
            Contact(dialer.id, dialer.ip, dialer.port)
            for (dialer, _), reply in zip(dialers, replies, strict=True)
            if reply is not None and reply.ok
        ]
        body = {"id": protocol.source_node.id, "ok": bool(named)}
        protocol.send_reply(request.msgid, body, named, address, limit)

    # -- dialing --------------------------------------------------------------------------------

    def serve_dial(self, request: Request, address: Address, limit: int) -> None:
        """A helper asks us to ping an address (see `_may_dial`); ok: we do."""
        protocol = self._protocol
        now = protocol.clock.now()
        target = request.dial_to
        ok = target is not None and self._may_dial(target, request, address, now)
        if ok and target is not None:
            self._dialed.pop(target[0], None)
            self._dialed[target[0]] = now
            while len(self._dialed) > _DIALED_MAX:
                self._dialed.popitem(last=False)
            self._pinging += 1
            protocol.spawn(self._ping(target))
        protocol.send_reply(
            request.msgid, {"id": protocol.source_node.id, "ok": ok}, [], address, limit
        )

    def _may_dial(self, target: Address, request: Request, address: Address, now: float) -> bool:
        """For a helper that proves its address (our token, or a contact of ours there): a
        host at most once per DIAL_SPACING, MAX_DIALS at a time, never a loopback, multicast
        or unspecified one unless this node allows loopback peers (a test fleet on one host)."""
        protocol = self._protocol
        if self._pinging >= MAX_DIALS or not protocol.is_proven(address, request):
            return False
        if not (protocol.allow_loopback or routable(target[0])):
            return False
        last = self._dialed.get(target[0])
        return last is None or now - last >= DIAL_SPACING

    async def _ping(self, target: Address) -> None:
        try:
            await self._protocol.request(target, "ping")
        finally:
            self._pinging -= 1


def routable(host: str) -> bool:
    """Whether a dialer may ping `host`: not loopback, multicast, unspecified or reserved."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip.is_reserved)
