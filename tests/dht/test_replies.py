"""dhtdeb/dht/replies.py: what a reply leaves out when it must fit a requester's limit."""

from __future__ import annotations

import socket

from dhtdeb.dht.replies import fit_peers_reply, fit_reply, key_answers
from dhtdeb.dht.wire import Contact, KeyAnswer, Reply, decode_datagram

V4 = socket.AF_INET
MSGID = b"m" * 20
OWN_ID = b"o" * 20


def _contacts(count: int, first: int = 1) -> list[Contact]:
    return [Contact(bytes([i]) * 20, f"10.0.0.{i}", 6881) for i in range(first, first + count)]


def _decoded(data: bytes | None) -> Reply:
    assert data is not None
    message = decode_datagram(data, V4)
    assert isinstance(message, Reply)
    return message


def test_a_reply_loses_contacts_from_the_end_then_its_token_then_is_refused() -> None:
    contacts = _contacts(8)
    whole = fit_reply(MSGID, {"id": OWN_ID, "token": b"t" * 8}, contacts, V4, 1500)
    assert whole.trimmed == 0
    assert _decoded(whole.data).nodes == tuple(contacts)
    assert whole.data is not None
    size = len(whole.data)

    cut = fit_reply(MSGID, {"id": OWN_ID, "token": b"t" * 8}, contacts, V4, size - 1)
    assert cut.trimmed == 1 and cut.data is not None and len(cut.data) < size
    assert _decoded(cut.data).nodes == tuple(contacts[:-1])  # the last contact went first

    bare = fit_reply(MSGID, {"id": OWN_ID, "token": b"t" * 8}, [], V4, 1500)
    assert bare.data is not None
    tokenless = fit_reply(
        MSGID, {"id": OWN_ID, "token": b"t" * 8}, contacts, V4, len(bare.data) - 1
    )
    assert tokenless.trimmed == len(contacts) + 1
    assert _decoded(tokenless.data).token is None and _decoded(tokenless.data).nodes == ()

    refused = fit_reply(MSGID, {"id": OWN_ID, "token": b"t" * 8}, contacts, V4, 10)
    assert refused.data is None and refused.trimmed == len(contacts) + 2


def test_a_peers_reply_drops_the_last_keys_first_then_contacts_then_peers() -> None:
    answers = [
        KeyAnswer(tuple(_contacts(8, 10 * k + 1)), tuple(_contacts(4, 200 + 10 * k)))
        for k in range(4)
    ]
    whole = fit_peers_reply(MSGID, {"id": OWN_ID}, answers, V4, 1500)
    assert whole.trimmed == 0 and len(_decoded(whole.data).answers) == 4
    assert whole.data is not None

    halved = fit_peers_reply(MSGID, {"id": OWN_ID}, answers, V4, len(whole.data) - 1)
    assert halved.trimmed == 1 and len(_decoded(halved.data).answers) == 2  # keys 0 and 1

    one = fit_peers_reply(MSGID, {"id": OWN_ID}, answers[:1], V4, 1500)
    assert one.data is not None
    fewer = fit_peers_reply(MSGID, {"id": OWN_ID}, answers[:1], V4, len(one.data) - 1)
    reply = _decoded(fewer.data)
    assert reply.for_key(0).peers == answers[0].peers  # a holder's peers outlast its contacts
    assert len(reply.nodes) == len(answers[0].nodes) - 1


def test_one_key_is_answered_with_peers_first_and_contacts_in_the_room_left() -> None:
    near = _contacts(8)
    held = _contacts(30, 100)

    def entries(key: bytes, limit: int) -> list[Contact]:
        return held[:limit]

    [answer] = key_answers(
        (b"k" * 20,),
        lambda key: near,
        entries,
        family=V4,
        limit=400,
        peers_per_key=24,
        peers_per_batched_key=8,
    )
    assert answer.peers == tuple(held[: len(answer.peers)]) and len(answer.peers) > 0
    assert len(answer.nodes) < len(near)  # the contacts got the room the peers left

    many = key_answers(
        tuple(bytes([k]) * 20 for k in range(40)),
        lambda key: near,
        entries,
        family=V4,
        limit=1400,
        peers_per_key=24,
        peers_per_batched_key=8,
    )
    assert 1 <= len(many) < 40  # only the keys that fit are worked out
    assert all(len(answer.peers) <= 8 for answer in many)
