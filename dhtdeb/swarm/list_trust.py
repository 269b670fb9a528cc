"""Which piece list one file's swarm download may trust, and the pieces held on its word.

Owns: the piece lists peers sent (*claims*, with who stands behind each), the list in use and its
rivals, whether the list in use is final (corroborated, or taken as a last resort), the pieces
*held* (they match the list in use, which is not corroborated yet), disputed pieces (a peer's copy
that contradicts the list in use), the audit in flight, and what the mirror said about pieces
(its digests, and digests the mirror proved wrong).

Trusts: nothing a peer says; the mirror's digests are the referee. Its verdicts (ban a peer, set
one aside, accept a piece) are carried out by the scheduler through `Verdicts`; which peers rank
highest comes from the peer table. Pure: no clock; the audit draws from the scheduler's injected
`random.Random`.

Theory of operation
-------------------
Piece lists are *claims*. The first claim received is the list in use; it is corroborated by an
identical list from a second peer, a matching piece from a peer that sent no list of its own, a
matching piece from the mirror, or an audit (a random block of a held peer piece that equals the
mirror's bytes), provided no rival claim is unresolved. A corroborated list is final for this
download: a later different list, or a peer piece that does not match it, is a lie (ban,
lied=True); a mirror piece that does not match it is refused and fetched from a peer instead.
Rival claims and disputed pieces (a peer's piece that contradicts an uncorroborated list) are
refereed by the mirror at the lowest index in question; whichever side disagrees with the mirror
is banned. Without a usable mirror, the claim with more supporters wins (authors, vouchers, mirror
matches); on a tie the list in use is kept and the others are set aside without a ban, and once
no party is left to ask, held pieces are accepted together and the whole-file hash decides.

Without any list (a multi-piece file that no peer has described), pieces from the mirror are
accepted as they arrive, as in a plain mirror download; a list that arrives later must agree with
every mirror digest seen or its author is banned.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from dhtdeb.discovery import Peer
from dhtdeb.swarm.actions import AUDIT_BLOCK, MIRROR, AuditPiece, Source
from dhtdeb.swarm.peer_table import ListState, PeerState, PeerTable
from dhtdeb.swarm.pieces import PieceList

__all__ = ["Claim", "ListTrust", "Verdicts"]

_MAX_RIVAL_LISTS = 4


class Verdicts(Protocol):
    """What the scheduler does when the trust decides (in the order decided)."""

    def ban(self, peer: Peer, reason: str, *, lied: bool) -> None: ...

    def set_aside(self, peer: Peer) -> None: ...

    def accept(self, index: int) -> None: ...


@dataclass(slots=True, eq=False)
class Claim:
    """One distinct piece list and who stands behind it."""

    pieces: PieceList
    authors: list[Peer]
    vouchers: set[Peer] = field(default_factory=set)
    mirror_matches: int = 0

    def support(self) -> int:
        return len(self.authors) + len(self.vouchers) + self.mirror_matches

    def has_evidence(self) -> bool:
        return len(self.authors) >= 2 or bool(self.vouchers) or self.mirror_matches > 0


class ListTrust:
    def __init__(self, verdicts: Verdicts, peers: PeerTable, whole: PieceList | None) -> None:
        """`whole`: the list of a one-piece file (its whole-file hash), final from the start."""
        self._verdicts = verdicts
        self._peers = peers
        self.single = whole is not None
        self._in_use: Claim | None = None if whole is None else Claim(whole, authors=[])
        self._rivals: list[Claim] = []
        self.final = whole is not None
        self.last_resort_used = False
        self._disputes: dict[int, dict[Peer, bytes]] = {}
        self._held: dict[int, Source] = {}
        self._audit: tuple[int, Claim] | None = None  # the held piece being checked, and its list
        self.mirror_digests: dict[int, bytes] = {}
        self.contradicted: dict[int, bytes] = {}  # a digest the mirror proved wrong, by piece

    # ----------------------------------------------------------------- queries

    @property
    def in_use(self) -> PieceList | None:
        return None if self._in_use is None else self._in_use.pieces

    @property
    def auditing(self) -> bool:
        return self._audit is not None

    def truth(self, index: int) -> bytes | None:
        """The digest piece `index` must have, as far as this node knows."""
        if self.final and self._in_use is not None:
            return self._in_use.pieces.digests[index]
        return self.mirror_digests.get(index)

    def digest(self, index: int) -> bytes:
        """The digest an accepted piece was checked against: the list's, else the mirror's."""
        claim = self._in_use
        return claim.pieces.digests[index] if claim is not None else self.mirror_digests[index]

    def says(self, index: int, digest: bytes) -> bool:
        """The list in use has `digest` for `index`."""
        return self._in_use is not None and self._in_use.pieces.digests[index] == digest

    def is_held(self, index: int) -> bool:
        return index in self._held

    def peer_held(self) -> bool:
        """Some held piece came from a peer (one an audit can check)."""
        return any(source is not MIRROR for source in self._held.values())

    def release(self, index: int) -> Source | None:
        """Piece `index` is accepted, or its copy was overwritten: it is held no more."""
        return self._held.pop(index, None)

    def eligible(self, state: PeerState) -> bool:
        """Whether a peer's pieces may be asked for: not while its list is on its way, nor while
        it disputes the list in use or stands behind a rival."""
        if state.list_state is ListState.PENDING:
            return False
        if not self._disputes and not self._rivals:
            return True
        peer = state.peer
        if any(peer in disputants for disputants in self._disputes.values()):
            return False
        return not any(peer in rival.authors for rival in self._rivals)

    def usable(self, peer: Peer) -> bool:
        """`peer` is admitted and eligible."""
        state = self._peers.get(peer)
        return state is not None and self.eligible(state)

    def askable(self) -> list[PeerState]:
        """The peers whose list may still be asked for (none for a one-piece file)."""
        return [] if self.single else self._peers.not_asked()

    def parties(self) -> list[Peer]:
        """The authors and vouchers of the list in use."""
        claim = self._in_use
        return [] if claim is None else [*claim.authors, *sorted(claim.vouchers)]

    def referee_indices(self, accepted: Callable[[int], bool]) -> set[int]:
        """The pieces the mirror must referee: disputed ones, and the first index where each
        rival differs from the list in use."""
        indices = {i for i in self._disputes if not accepted(i)}
        claim = self._in_use
        if claim is not None and not self.final:
            for rival in self._rivals:
                for index, (a, b) in enumerate(
                    zip(claim.pieces.digests, rival.pieces.digests, strict=True)
                ):
                    if a != b:
                        indices.add(index)
                        break
        return indices

    # ------------------------------------------------------------------ events

    def forget(self, peer: Peer) -> None:
        """`peer` left the download: its disputes go with it."""
        for index in list(self._disputes):
            self._disputes[index].pop(peer, None)
            if not self._disputes[index]:
                del self._disputes[index]

    def lists_to_ask(
        self, wanted: int, mirror_usable: bool, downloading: Callable[[Peer], bool]
    ) -> list[Peer]:
        """The best-ranked peers to ask for their list now (marked pending), until `wanted`
        lists are asked for or in; every peer while no mirror can referee the list in use.
        A `downloading` peer's offers are no list."""
        if self.single or self.final:
            return []
        states = list(self._peers)
        active = sum(
            1 for s in states if s.list_state is not ListState.NOT_ASKED and not downloading(s.peer)
        )
        limit = wanted
        if self._in_use is not None and not mirror_usable:
            limit = len(states)  # no referee: every peer's word may be needed
        candidates = sorted(self.askable(), key=self._peers.rank, reverse=True)
        asked = candidates[: max(0, limit - active)]
        for state in asked:
            self._peers.asked_list(state)
        return [state.peer for state in asked]

    def add_claim(self, peer: Peer, pieces: PieceList) -> None:
        if self.final:
            assert self._in_use is not None
            if pieces.digests == self._in_use.pieces.digests:
                if peer not in self._in_use.authors:
                    self._in_use.authors.append(peer)
            else:
                self._verdicts.ban(peer, "piece list contradicts the corroborated list", lied=True)
            return
        for index, digest in self.mirror_digests.items():
            if pieces.digests[index] != digest:
                reason = f"piece list contradicted by the mirror at {index}"
                self._verdicts.ban(peer, reason, lied=True)
                return
        if any(pieces.digests[i] == d for i, d in self.contradicted.items()):
            self._verdicts.set_aside(peer)  # it may hand on a list it was fooled into taking
            return
        for claim in self._claims():
            claim.vouchers.discard(peer)
        for claim in self._claims():
            if claim.pieces.digests == pieces.digests:
                if peer not in claim.authors:
                    claim.authors.append(peer)
                return
        claim = Claim(pieces, authors=[peer], mirror_matches=len(self.mirror_digests))
        if self._in_use is None:
            self._in_use = claim
        elif len(self._rivals) < _MAX_RIVAL_LISTS:
            self._rivals.append(claim)
        else:
            self._verdicts.set_aside(peer)

    def peer_piece(self, peer: Peer, index: int) -> None:
        """A peer's copy of `index` matches the list in use: accepted once the list is final,
        else held (and the peer vouches for the list unless it wrote one)."""
        claim = self._in_use
        assert claim is not None
        if self.final:
            self._verdicts.accept(index)
        else:
            self._held[index] = peer
            if not any(peer in c.authors for c in self._claims()):
                claim.vouchers.add(peer)

    def peer_contradicts(self, peer: Peer, index: int, digest: bytes, mirror_usable: bool) -> None:
        """A peer's copy of `index` does not match the list in use."""
        if self.final or index in self.mirror_digests:
            self._verdicts.ban(peer, f"piece {index} does not match the piece list", lied=True)
        elif mirror_usable:
            self._disputes.setdefault(index, {})[peer] = digest
        else:
            self._verdicts.set_aside(peer)  # its word against the list's author: no referee

    def mirror_piece(self, index: int, digest: bytes) -> None:
        """The mirror sent `index` with `digest`: evidence for and against every claim."""
        self.mirror_digests[index] = digest
        if self.final:
            return
        disputed = self._disputes.pop(index, {})
        for claim in self._claims():
            if claim.pieces.digests[index] == digest:
                claim.mirror_matches += 1
            else:
                self._refute(claim, "piece list contradicted by the mirror")
        for peer, claimed in sorted(disputed.items()):
            if claimed != digest:
                self._verdicts.ban(peer, f"piece {index} contradicted by the mirror", lied=True)

    def hold_mirror_piece(self, index: int) -> None:
        self._held[index] = MIRROR

    def settle(self, mirror_usable: bool) -> None:
        """Resolve what can be resolved without new evidence; finalize a corroborated list."""
        claim = self._in_use
        if self.final or claim is None:
            return
        if not mirror_usable:
            if self._rivals:
                self._resolve_by_support()
            for peer in self._disputants():
                self._verdicts.set_aside(peer)
            self._disputes.clear()
        claim = self._in_use
        if claim is not None and not self._rivals and not self._disputes and claim.has_evidence():
            self._finalize()

    def last_resort(self, accepted: Callable[[int], bool], piece_count: int) -> None:
        """No mirror and nobody left to ask (the caller knows): accept what the one list says
        once every piece is `accepted` or held; the whole-file hash is then the only
        check (as for a plain mirror download)."""
        if self.final or self._in_use is None or self._rivals:
            return
        if all(accepted(i) or i in self._held for i in range(piece_count)):
            self.last_resort_used = True
            self._finalize()

    def abandon(self) -> None:
        """The list in use says what the mirror contradicted, so it goes, with its rivals; a
        plain download goes on. Its authors are not banned for it: a downloader hands on a list
        it took as corroborated (the liar's, matching the liar's piece), and a piece that does
        not match such a list may have been true."""
        self._in_use = None
        self._rivals = []
        self.final = False
        self._disputes.clear()
        self._drop_held()

    # ------------------------------------------------------------------- audit

    def start_audit(
        self, rng: random.Random, span: Callable[[int], tuple[int, int]]
    ) -> AuditPiece | None:
        """Check a lone list cheaply: a random block of a random held peer piece (which matches
        the list) against the same bytes from the mirror. The piece was committed to by the list
        before the block was chosen, so a list entry that lies is caught unless the liar guessed
        the block; the whole-file hash remains the final check. The caller knows that no list is
        on its way and that the mirror may be asked."""
        claim = self._in_use
        if self._audit is not None or claim is None or self.final or self._rivals or self._disputes:
            return None
        held = sorted(i for i, source in self._held.items() if source is not MIRROR)
        if not held:
            return None
        index = rng.choice(held)
        start, end = span(index)
        offset = start + rng.randrange(max(1, end - start - AUDIT_BLOCK + 1))
        self._audit = (index, claim)
        return AuditPiece(
            index, offset, min(end, offset + AUDIT_BLOCK), claim.pieces.digests[index]
        )

    def end_audit(self, index: int | None = None) -> Claim | None:
        """The audit is over: its list, when it was the audit of `index` (any when None)."""
        audit, self._audit = self._audit, None
        if audit is None or (index is not None and audit[0] != index):
            return None
        return audit[1]

    def audited(self, claim: Claim, index: int, matched: bool | None) -> None:
        """The mirror's bytes inside held piece `index` agree with the held copy (or not)."""
        if self.final or claim is not self._in_use or matched is None:
            return
        if matched:
            claim.mirror_matches += 1
        else:
            # The copy matched the list's entry, the mirror does not: the list is wrong there,
            # and a peer that sent that copy without being an author vouched for a lie.
            source = self._held.get(index)
            self._refute(claim, f"piece list contradicted by the mirror inside piece {index}")
            if isinstance(source, Peer):
                self._verdicts.ban(source, f"piece {index} contradicted by the mirror", lied=True)

    # --------------------------------------------------------------- internals

    def _claims(self) -> list[Claim]:
        return ([] if self._in_use is None else [self._in_use]) + list(self._rivals)

    def _refute(self, claim: Claim, reason: str) -> None:
        for peer in claim.authors:
            self._verdicts.ban(peer, reason, lied=True)
        if claim is self._in_use:
            self._in_use = None
            self._disputes.clear()
            if self._rivals:
                best = max(self._rivals, key=self._claim_rank)
                self._rivals.remove(best)
                self._in_use = best
            self._drop_held()
        else:
            self._rivals.remove(claim)

    def _claim_rank(self, claim: Claim) -> tuple[bool, int, tuple[float, float]]:
        authors = [s for p in claim.authors if (s := self._peers.get(p)) is not None]
        best = max((self._peers.rank(state) for state in authors), default=(0.0, 0.0))
        return (claim.has_evidence(), claim.support(), best)

    def _drop_held(self) -> None:
        """The list that held pieces were checked against is gone. Peer copies go back to
        missing; mirror copies stay held if the new list agrees, and are accepted if there is
        no list left (a plain mirror download)."""
        claim = self._in_use
        for index, source in sorted(self._held.items()):
            if source is not MIRROR or (
                claim is not None and not claim.pieces.matches(index, self.mirror_digests[index])
            ):
                del self._held[index]
            elif claim is None:
                self._verdicts.accept(index)

    def _resolve_by_support(self) -> None:
        assert self._in_use is not None
        candidates = [self._in_use, *self._rivals]
        best = max(candidates, key=lambda c: (c.support(), c is self._in_use))
        for claim in candidates:
            if claim is best:
                continue
            if best.support() > claim.support():
                for peer in claim.authors:
                    self._verdicts.ban(peer, "piece list outvoted", lied=True)
            else:
                for peer in claim.authors:
                    self._verdicts.set_aside(peer)
        switched = best is not self._in_use
        self._in_use = best
        self._rivals = []
        if switched:
            self._drop_held()
            self._disputes.clear()

    def _disputants(self) -> list[Peer]:
        return sorted({peer for by_peer in self._disputes.values() for peer in by_peer})

    def _finalize(self) -> None:
        self.final = True
        assert self._in_use is not None
        for peer in self._disputants():
            self._verdicts.ban(peer, "piece does not match the piece list", lied=True)
        self._disputes.clear()
        for index in sorted(self._held):
            self._verdicts.accept(index)
