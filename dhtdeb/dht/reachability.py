"""Whether other nodes can reach this one unasked: what a node behind NAT never hears.

Owns: the evidence, and the verdict that this node is unreachable. Trusts: the source address of
a datagram; a forged one can only make this node believe it is reachable, which is what it
assumes anyway.

A host behind NAT, or behind a firewall that drops what it did not ask for, receives datagrams
only from addresses it sent one to lately (a home router keeps a UDP mapping 30-180 s). A request
from an address this node has not sent anything to for `NAT_WINDOW` seconds, a stranger's,
proves that others reach it. A node that knows enough of the network to be asked by strangers
(`EVIDENCE_CONTACTS` contacts in its routing table) and heard no stranger for `SILENT_WINDOW`
seconds is taken to be unreachable, until a stranger asks. An unreachable node still looks up
and downloads, but announces nothing: every downloader that tried a holder nobody can connect to
lost a connect timeout and sent the file to the mirror (docs/simulation.md).

Small fleets are never judged by silence: with a handful of machines the others may well only
ever answer this node, and on a LAN every host is reachable.

Silence takes ten minutes, and a machine behind NAT announces its whole upgrade in its first
minutes; what it announced stays in the others' stores for the peer TTL. So a node also asks for
a test (wire.py, `dial_back`): when it starts, and again while it is taken to be unreachable.
Helpers name the node that will ping it (`dial_expected`); a ping from one of them, or any
stranger's request, proves it reachable; nothing from any of them within the test's wait proves
it unreachable (`dial_test_ended`), at once. A test is conclusive only if this node had not
sent to the named dialer lately (its own router would let the ping in): in a fleet of a few
machines that all talk to each other, tests are inconclusive and change nothing.
"""

from __future__ import annotations

from collections import OrderedDict

from dhtdeb.dht.guards import source_key
from dhtdeb.dht.wire import Address

NAT_WINDOW = 180.0  # seconds a router keeps a UDP mapping open, at most
SILENT_WINDOW = 600.0  # seconds without a stranger before the verdict
EVIDENCE_CONTACTS = 24  # routing-table contacts of a network where strangers would ask
_SENT_MAX = 65_536  # hosts remembered; the oldest go first (they are past the window anyway)


def _host_key(address: Address) -> str:
    """What `Reachability` remembers a send under: the host (a router that filters by address
    alone lets in every port of a host this node wrote to, so a request from another port of it
    proves nothing), except on loopback, where test fleets run many nodes on one host: the
    routing table's identity of a source (guards.py)."""
    return source_key(address, allow_loopback=True)


class Reachability:
    def __init__(self) -> None:
        self._sent: OrderedDict[str, float] = OrderedDict()  # oldest first
        self._stranger_at: float | None = None
        self._known_since: float | None = None  # contacts enough for strangers to ask, since
        self._dial_failed_at: float | None = None  # a conclusive dial test heard nobody
        self.unreachable = False

    def sent(self, address: Address, now: float) -> None:
        key = _host_key(address)
        self._sent[key] = now
        self._sent.move_to_end(key)
        if len(self._sent) > _SENT_MAX:
            self._sent.popitem(last=False)

    def request_from(self, address: Address, now: float) -> bool:
        """A request arrived: a stranger's (a host this node has not written to lately, such
        as a dialer of a test) proves that others reach this node. Whether it did."""
        last = self._sent.get(_host_key(address))
        if last is None or now - last > NAT_WINDOW:
            self._stranger_at = now
            self.unreachable = False
            return True
        return False

    def dial_expected(self, address: Address, now: float) -> bool:
        """A dial test's helper named a node that will ping this one from `address`: whether
        its ping would prove anything (not if this node wrote to its host lately)."""
        last = self._sent.get(_host_key(address))
        return last is None or now - last > NAT_WINDOW

    def proven_since(self, since: float) -> bool:
        """A stranger or a dialer has asked this node something at or after `since`."""
        return self._stranger_at is not None and self._stranger_at >= since

    def dial_test_ended(self, now: float, *, heard: bool) -> None:
        """A conclusive dial test ended: `heard` from a dialer or stranger, or from nobody."""
        if heard:
            self._dial_failed_at = None
            self.unreachable = False
        else:
            self._dial_failed_at = now
            self.unreachable = True

    def judge(self, now: float, contacts: int) -> bool:
        """The verdict now, given the routing table's size: True when this node looks
        unreachable. Called before announcing."""
        self._prune(now)
        if contacts < EVIDENCE_CONTACTS:
            self._known_since = None
        elif self._known_since is None:
            self._known_since = now
        heard = self._stranger_at is not None and now - self._stranger_at <= SILENT_WINDOW
        failed = self._dial_failed_at is not None and (
            self._stranger_at is None or self._stranger_at < self._dial_failed_at
        )
        self.unreachable = failed or (
            not heard and self._known_since is not None and now - self._known_since >= SILENT_WINDOW
        )
        return self.unreachable

    def _prune(self, now: float) -> None:
        while self._sent:
            key, at = next(iter(self._sent.items()))
            if now - at <= NAT_WINDOW:
                return
            del self._sent[key]
