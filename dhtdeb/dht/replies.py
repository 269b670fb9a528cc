"""What a DHT reply holds, and how it is cut to fit: the answers to a get_peers request's keys,
and the trimming of any reply to the bytes its requester may be sent.

Owns: the choice and order of what a reply leaves out. A reply never exceeds `MAX_DATAGRAM`, nor
`limit` (`amplification` times the request's size for a requester that has not proven its
address, protocol.py). Pure: the node's routing table and peer store are asked through the
callables given, and the encoded reply is returned, not sent. Trusts: its caller's limit.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dhtdeb.dht.wire import (
    ID_SIZE,
    MAX_DATAGRAM,
    Contact,
    KeyAnswer,
    address_size,
    encode_answers,
    encode_nodes,
    encode_reply,
)

# The k contacts nearest a key (by the routing table), and up to n of its peers (the peer store).
Nearest = Callable[[bytes], list[Contact]]
Entries = Callable[[bytes, int], list[Contact]]


@dataclass(frozen=True, slots=True)
class Fitted:
    """An encoded reply (None: nothing fitted, refused), after `trimmed` cuts."""

    data: bytes | None
    trimmed: int


def key_answers(
    keys: tuple[bytes, ...],
    nearest: Nearest,
    entries: Entries,
    *,
    family: socket.AddressFamily,
    limit: int,
    peers_per_key: int,
    peers_per_batched_key: int,
) -> list[KeyAnswer]:
    """Answers to the first keys of a get_peers request, as many as fit in `limit` bytes (at
    least one): each costs a scan of the routing table, so none is worked out that would not be
    sent."""
    entry = ID_SIZE + address_size(family) + 2
    budget = limit - 96  # framing, message id, our id, the token
    peers_each = peers_per_key if len(keys) == 1 else peers_per_batched_key
    contacts: set[Contact] = set()
    answers: list[KeyAnswer] = []
    used = 0
    for key in keys:
        near = nearest(key)
        if len(keys) == 1:
            # One key: a node holding peers answers with peers first (BEP 5), contacts in the
            # room left (a lookup gets contacts from the nodes that hold no peers).
            peers = entries(key, max(1, min(peers_each, (budget - 8) // entry)))
            room = max(0, (budget - 8 - len(peers) * entry) // (entry + 1))
            return [KeyAnswer(tuple(near[:room]), tuple(peers))]
        # Several keys: each key's contacts first (the lookups of the other keys go on through
        # them), then a few of its peers in the room left.
        fresh = [c for c in near if c not in contacts]
        room = (budget - used - 8 - len(near) - len(fresh) * entry) // entry
        peers = entries(key, max(1, min(peers_each, room)))
        size = 8 + len(near) + (len(fresh) + len(peers)) * entry
        if answers and (used + size > budget or len(contacts) + len(fresh) > 256):
            break
        used += size
        contacts.update(fresh)
        answers.append(KeyAnswer(tuple(near), tuple(peers)))
    return answers


def fit_reply(
    msgid: bytes,
    body: dict[str, Any],
    nodes: list[Contact],
    family: socket.AddressFamily,
    limit: int,
) -> Fitted:
    """A ping, find_node, announce_peer or dial reply in `limit` bytes: contacts are dropped
    from the end, then the token. `body` is the reply's, changed in place."""
    trimmed = 0
    while True:
        if nodes:
            body["nodes"] = encode_nodes(nodes, family)
        else:
            body.pop("nodes", None)
        data = encode_reply(msgid, body)
        if len(data) <= min(limit, MAX_DATAGRAM):
            return Fitted(data, trimmed)
        trimmed += 1
        if nodes:
            nodes = nodes[:-1]
        elif "token" in body:
            del body["token"]
        else:
            return Fitted(None, trimmed)


def fit_peers_reply(
    msgid: bytes,
    body: dict[str, Any],
    answers: list[KeyAnswer],
    family: socket.AddressFamily,
    limit: int,
) -> Fitted:
    """A get_peers reply in `limit` bytes: the keys asked last are left unanswered first (the
    asker asks again), then the one key left loses contacts (a node holding peers answers with
    peers first, BEP 5), then peers, then the token. `body` is changed in place."""
    trimmed = 0
    while True:
        contacts = list(dict.fromkeys(c for answer in answers for c in answer.nodes))
        nodes, sections = encode_answers(contacts, answers, family)
        body["nodes"] = nodes
        body["keys"] = sections
        data = encode_reply(msgid, body)
        excess = len(data) - min(limit, MAX_DATAGRAM)
        if excess <= 0:
            return Fitted(data, trimmed)
        trimmed += 1
        if len(answers) > 1:
            answers = answers[: max(1, len(answers) // 2)]
            continue
        answer = answers[0]
        if answer.nodes:
            answers = [KeyAnswer(answer.nodes[:-1], answer.peers)]
        elif answer.peers:
            per_peer = ID_SIZE + address_size(family) + 2
            keep = max(0, len(answer.peers) - math.ceil(excess / per_peer))
            answers = [KeyAnswer((), answer.peers[:keep])]
        elif "token" in body:
            del body["token"]
        else:
            return Fitted(None, trimmed)
