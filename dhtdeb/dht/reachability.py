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

Small fleets are never judged: with a handful of machines the others may well only ever answer
this node, and on a LAN every host is reachable.
"""

from __future__ import annotations

from collections import OrderedDict

from dhtdeb.dht.wire import Address

NAT_WINDOW = 180.0  # seconds a router keeps a UDP mapping open, at most
SILENT_WINDOW = 600.0  # seconds without a stranger before the verdict
EVIDENCE_CONTACTS = 24  # routing-table contacts of a network where strangers would ask
_SENT_MAX = 65_536  # addresses remembered; the oldest go first (they are past the window anyway)


class Reachability:
    def __init__(self) -> None:
        self._sent: OrderedDict[Address, float] = OrderedDict()  # oldest first
        self._stranger_at: float | None = None
        self._known_since: float | None = None  # contacts enough for strangers to ask, since
        self.unreachable = False

    def sent(self, address: Address, now: float) -> None:
        self._sent[address] = now
        self._sent.move_to_end(address)
        if len(self._sent) > _SENT_MAX:
            self._sent.popitem(last=False)

    def request_from(self, address: Address, now: float) -> None:
        """A request arrived: a stranger's proves that others reach this node."""
        last = self._sent.get(address)
        if last is None or now - last > NAT_WINDOW:
            self._stranger_at = now
            self.unreachable = False

    def judge(self, now: float, contacts: int) -> bool:
        """The verdict now, given the routing table's size: True when this node looks
        unreachable. Called before announcing."""
        self._prune(now)
        if contacts < EVIDENCE_CONTACTS:
            self._known_since = None
        elif self._known_since is None:
            self._known_since = now
        heard = self._stranger_at is not None and now - self._stranger_at <= SILENT_WINDOW
        self.unreachable = (
            not heard and self._known_since is not None and now - self._known_since >= SILENT_WINDOW
        )
        return self.unreachable

    def _prune(self, now: float) -> None:
        while self._sent:
            address, at = next(iter(self._sent.items()))
            if now - at <= NAT_WINDOW:
                return
            del self._sent[address]
