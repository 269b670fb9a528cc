"""What the peers that are still downloading the file told this node: the crowd's offers.

Owns, for each admitted peer that answered "offers only" (a downloader, docs/swarm.md "Flash
crowd"): the pieces it offers with their digests (those it got from its own mirror stream), the
pieces it relays (took on another downloader's offer and passes on), the pieces its mirror
stream is on now ("fetch claims", left to it for `fetch_claim_ttl`), the node id it splits the
mirror's pieces by, and when to ask it for its offers again.

Trusts: nothing. An offer is one peer's word about one piece: it may never change, and must
agree with what the mirror sent and with a corroborated list (the caller's `truth`), else it is a
lie. A relayed piece is no word of the relay's own: it is usable only where its digest is what a
usable downloader offered this node itself, and a relay whose digest differs is simply not used.
Which peers are usable (not disputed, not pending) is the caller's predicate. Pure: time comes in
as `now`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dhtdeb.discovery import Peer
from dhtdeb.swarm.actions import SchedulerConfig
from dhtdeb.swarm.pieces import PieceList

__all__ = ["Crowd", "PieceVerdict"]

Usable = Callable[[Peer], bool]


@dataclass(slots=True)
class _Told:
    """What one admitted peer told about its own download."""

    offers: dict[int, bytes] | None = None  # None: not downloading (a list, or no answer yet)
    offered: frozenset[int] = frozenset()  # the keys of `offers`, kept for `servable`
    relays: dict[int, bytes] = field(default_factory=dict)
    refresh_at: float | None = None  # when to ask a downloading peer for its offers again
    fetching: dict[int, float] = field(default_factory=dict)  # piece -> first said to be fetched
    node: bytes = b""  # a downloading peer's node id, for splitting the mirror's pieces


@dataclass(frozen=True, slots=True)
class PieceVerdict:
    """What a downloading peer's copy of a piece proves, with no list in use: accept it on
    `author`'s word, `lie` (why the peer is banned), or `mended` (it no longer holds what it
    relayed: no lie, just not to be asked for that piece again); all empty: nothing."""

    author: Peer | None = None
    lie: str = ""
    mended: bool = False


class Crowd:
    def __init__(self, config: SchedulerConfig, piece_count: int) -> None:
        self._config = config
        self._piece_count = piece_count
        # Every admitted peer, in the order of admission (the peer table's order).
        self._told: dict[Peer, _Told] = {}

    def admit(self, peer: Peer) -> None:
        self._told[peer] = _Told()

    def forget(self, peer: Peer) -> bool:
        """Forget `peer`; true when it had offered pieces (what others relay of them is of no
        use any more)."""
        told = self._told.pop(peer, None)
        return told is not None and bool(told.offers)

    # ------------------------------------------------------------------ events

    def take_offers(
        self,
        peer: Peer,
        pieces: PieceList,
        have: frozenset[int],
        fetching: range,
        relayed: frozenset[int],
        now: float,
        *,
        truth: Callable[[int], bytes | None],
        wrong: Mapping[int, bytes],
    ) -> int | None:
        """A downloading peer's answer. Returns the first piece whose offer contradicts (an
        earlier offer, `truth(index)`, or a digest in `wrong` that the mirror proved wrong):
        nothing is taken then, and the caller bans the peer as a liar."""
        told = self._told[peer]
        wanted = [i for i in sorted(have) if 0 <= i < self._piece_count]
        offers = {i: pieces.digests[i] for i in wanted if i not in relayed}
        relays = {i: pieces.digests[i] for i in wanted if i in relayed}
        known = told.offers or {}
        for index, digest in offers.items():
            expected = truth(index)
            if (
                known.get(index, digest) != digest
                or (expected is not None and expected != digest)
                or wrong.get(index) == digest
            ):
                return index
        told.offers = {**known, **offers}
        told.offered = frozenset(told.offers)
        told.relays = {i: d for i, d in relays.items() if i not in told.offers}
        told.fetching = {
            i: told.fetching.get(i, now)
            for i in fetching
            if 0 <= i < self._piece_count and i not in told.offers
        }
        told.refresh_at = now + self._config.offers_refresh
        return None

    def set_node(self, peer: Peer, node: bytes) -> None:
        self._told[peer].node = node

    def took_list(self, peer: Peer) -> None:
        """`peer` sent a whole piece list: it is no downloader (any more)."""
        told = self._told[peer]
        told.offers = None
        told.offered = frozenset()
        told.refresh_at = None

    def judge(
        self, peer: Peer, index: int, digest: bytes, mirror: bytes | None, usable: Usable
    ) -> PieceVerdict:
        """`peer` sent piece `index` with `digest`, and the mirror sent this node `mirror` for
        it (or nothing). An offered piece must match the offer; a relayed one is taken on the
        word of the downloader whose offer it matches."""
        told = self._told[peer]
        offered = (told.offers or {}).get(index)
        relayed = told.relays.get(index)
        if offered is None and relayed is not None:
            mended = mirror == digest or self.author(index, digest, usable) is not None
            if relayed != digest and mended:
                # Its copy was a liar's, which its own inquiry retracted and mended since it
                # told us: the bytes are those someone took from the mirror. No lie.
                told.relays.pop(index, None)
                return PieceVerdict(mended=True)
            if relayed != digest:
                return PieceVerdict(lie=f"piece {index} does not match what it relays")
            return PieceVerdict(author=self.author(index, relayed, usable))
        if offered == digest:
            return PieceVerdict(author=peer)
        if offered is not None:
            return PieceVerdict(lie=f"piece {index} does not match its offer")
        return PieceVerdict()

    def due_refreshes(self, now: float) -> list[Peer]:
        """The downloading peers to ask for their offers again now."""
        due = []
        for peer, told in self._told.items():
            if told.refresh_at is not None and told.refresh_at <= now:
                told.refresh_at = None
                due.append(peer)
        return due

    def refresh_deadlines(self) -> list[float]:
        return [t.refresh_at for t in self._told.values() if t.refresh_at is not None]

    # ----------------------------------------------------------------- queries

    def is_downloading(self, peer: Peer) -> bool:
        told = self._told.get(peer)
        return told is not None and told.offers is not None

    def any_downloading(self) -> bool:
        return any(t.offers is not None for t in self._told.values())

    def servable(self, usable: Usable) -> dict[Peer, frozenset[int]]:
        """What each downloading peer can serve: its own offers, and the pieces it relays whose
        digest some usable downloader offered this node itself. Called on every downloader's
        answer (each asked every `offers_refresh`), so the work is kept to the pieces relayed:
        with dozens of downloaders, rebuilding every offer each time was quadratic."""
        relayed: set[int] = set()
        for told in self._told.values():
            if told.offers is not None and told.relays:
                relayed.update(told.relays)
        offered: dict[int, set[bytes]] = {}
        if relayed:
            for peer, told in self._told.items():
                if told.offers is not None and usable(peer):
                    for index in relayed.intersection(told.offers):
                        offered.setdefault(index, set()).add(told.offers[index])
        servable = {}
        for peer, told in self._told.items():
            if told.offers is None:
                continue
            if not told.relays:
                servable[peer] = told.offered
                continue
            relays = (i for i, d in told.relays.items() if d in offered.get(i, ()))
            servable[peer] = told.offered.union(relays)
        return servable

    def author(self, index: int, digest: bytes, usable: Usable) -> Peer | None:
        """A usable downloader that offered piece `index` with `digest` itself."""
        for peer, told in self._told.items():
            if told.offers is not None and told.offers.get(index) == digest and usable(peer):
                return peer
        return None

    def others_offer(self, index: int, usable: Usable, author: Peer | None) -> list[bytes]:
        """The digests that usable downloaders other than `author` offer for `index`."""
        return [
            digest
            for peer, told in self._told.items()
            if told.offers is not None
            and (digest := told.offers.get(index)) is not None
            and peer != author
            and usable(peer)
        ]

    def partners(self, node: bytes, usable: Usable) -> list[tuple[Peer, bytes]]:
        """The usable downloading peers that told their id (not `node`), with that id: those the
        mirror's pieces are split with."""
        return [
            (peer, told.node)
            for peer, told in self._told.items()
            if told.offers is not None and told.node and told.node != node and usable(peer)
        ]

    def fresh_claims(self, peer: Peer, now: float) -> list[int]:
        """The pieces a downloading peer's mirror request is on, by its last answer, that it
        has not sat on for longer than fetch_claim_ttl."""
        oldest = now - self._config.fetch_claim_ttl
        return [index for index, since in self._told[peer].fetching.items() if since > oldest]

    def is_fetching(self, peer: Peer, now: float) -> bool:
        """The downloading peer said at its last answer that its mirror request is on a piece."""
        return bool(self.fresh_claims(peer, now))

    def any_fetching(self, now: float) -> bool:
        return any(
            told.offers is not None and self.is_fetching(peer, now)
            for peer, told in self._told.items()
        )

    def fetched(self, now: float, usable: Usable) -> set[int]:
        """The pieces usable peers' mirror streams are on (and have not sat on for longer than
        fetch_claim_ttl): they will offer them soon, the mirror need not send them twice."""
        fetched: set[int] = set()
        for peer, told in self._told.items():
            if told.fetching and usable(peer):
                fetched.update(self.fresh_claims(peer, now))
        return fetched
