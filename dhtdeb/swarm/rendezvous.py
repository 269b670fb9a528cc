"""Rendezvous hashing over one file's pieces: which downloader's share piece i is.

Owns: the order of node ids for each piece of one file — hash(node, file, i), lowest first — that
every downloader of the file computes alike, so that downloaders that know each other split the
mirror's pieces without talking about it (docs/swarm.md, "Flash crowd"), and the inquiry spreads
its checks the same way. Pure: no clock, no randomness, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence


class Rendezvous:
    def __init__(self, file_digest: bytes) -> None:
        self._file = file_digest
        self._keys: dict[tuple[bytes, int], bytes] = {}  # memo: asked again at every event

    def key(self, node: bytes, index: int) -> bytes:
        """Where `node` stands for piece `index` (lower comes first)."""
        key = self._keys.get((node, index))
        if key is None:
            material = node + self._file + index.to_bytes(8, "big")
            key = hashlib.blake2b(material, digest_size=8).digest()
            self._keys[(node, index)] = key
        return key

    def ranks(
        self, node: bytes, partners: Sequence[tuple[bytes, bool]], indices: Iterable[int]
    ) -> dict[int, tuple[int, bool]]:
        """For each index: how many of `partners` (node id, busy) come before `node` (0: the
        piece is its share), and whether one of those is busy."""
        ranks = {}
        for index in indices:
            mine = self.key(node, index)
            before = [busy for other, busy in partners if self.key(other, index) < mine]
            ranks[index] = (len(before), any(before))
        return ranks
