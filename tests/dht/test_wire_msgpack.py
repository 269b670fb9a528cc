"""The wire format did not change with the C msgpack: what we send is byte for byte what umsgpack
packed, and a datagram body is accepted or refused, and decoded, as umsgpack (with the depth rule
of wire.py) did it."""

from __future__ import annotations

import datetime
import math
import socket
import struct

import umsgpack
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dhtdeb.dht import wire
from dhtdeb.dht.wire import (
    MAX_KEYS,
    Contact,
    KeyAnswer,
    encode_answers,
    encode_bits,
    encode_nodes,
    encode_reply,
    encode_request,
)
from dhtdeb.errors import RemoteProtocolError

ids = st.binary(min_size=20, max_size=20)
v4 = st.builds(
    Contact,
    ids,
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.integers(1, 65535),
)


def _umsgpack_request(msgid: bytes, method: str, args: list[object]) -> bytes:
    return b"\x00" + msgid + umsgpack.packb([method, args])


@settings(max_examples=200, deadline=None)
@given(
    msgid=ids,
    node_id=ids,
    method=st.sampled_from(wire.METHODS),
    keys=st.lists(ids, min_size=1, max_size=MAX_KEYS, unique=True),
    token=st.none() | st.binary(min_size=8, max_size=8),
    padding=st.sampled_from([0, 1, 31, 32, 255, 256, 700, 1200]),
)
def test_requests_are_packed_as_umsgpack_packed_them(
    msgid: bytes,
    node_id: bytes,
    method: str,
    keys: list[bytes],
    token: bytes | None,
    padding: int,
) -> None:
    target = keys[0] if method == "find_node" else b"".join(keys)
    sent = encode_request(msgid, method, node_id, target, token, padding)
    args: list[object] = [node_id]
    if method != "ping":
        args += [target, token, b"\x00" * padding]
    assert sent == _umsgpack_request(msgid, method, args)


@settings(max_examples=200, deadline=None)
@given(
    msgid=ids,
    node_id=ids,
    token=st.none() | st.binary(min_size=8, max_size=8),
    contacts=st.lists(v4, max_size=40, unique_by=lambda c: c.node_id),
    peers=st.lists(st.lists(v4, max_size=20), max_size=MAX_KEYS),
    stored=st.lists(st.booleans(), max_size=MAX_KEYS),
    data=st.data(),
)
def test_replies_are_packed_as_umsgpack_packed_them(
    msgid: bytes,
    node_id: bytes,
    token: bytes | None,
    contacts: list[Contact],
    peers: list[list[Contact]],
    stored: list[bool],
    data: st.DataObject,
) -> None:
    family = socket.AF_INET
    answers = [
        KeyAnswer(
            tuple(data.draw(st.lists(st.sampled_from(contacts), unique=True))) if contacts else (),
            tuple(key_peers),
        )
        for key_peers in peers
    ]
    nodes, sections = encode_answers(contacts, answers, family)
    bodies: list[dict[str, object]] = [
        {"id": node_id, "token": token},  # ping
        {"id": node_id, "token": token, "nodes": encode_nodes(contacts, family)},  # find_node
        {"id": node_id, "token": token, "nodes": nodes, "keys": sections},  # get_peers
        {"id": node_id, "ok": all(stored), "stored": encode_bits(stored)},  # announce_peer
        {"id": node_id, "ok": False},
    ]
    for body in bodies:
        assert encode_reply(msgid, body) == b"\x01" + msgid + umsgpack.packb(body)


# -- decoding: the reference is umsgpack behind the same depth rule -----------------------------


def _timestamp(ext: umsgpack.Ext) -> datetime.datetime:
    """umsgpack's timestamp, refused where msgpack refuses it (wire.py: nanoseconds >= 10**9)."""
    if len(ext.data) == 8 and struct.unpack(">Q", ext.data)[0] >> 34 >= 10**9:
        raise ValueError("nanoseconds")
    if len(ext.data) == 12 and struct.unpack(">I", ext.data[:4])[0] >= 10**9:
        raise ValueError("nanoseconds")
    value: datetime.datetime = umsgpack._unpack_ext_timestamp(ext.data, {})
    return value


def _reference(data: bytes) -> object:
    if len(data.translate(None, wire._NOT_CONTAINER_BYTES)) > wire._CHEAP_NESTING:
        wire._check_depth(data)
    try:
        return umsgpack.unpackb(data, ext_handlers={-1: _timestamp})
    except Exception as exc:
        raise RemoteProtocolError(type(exc).__name__) from None


def _plain(value: object) -> object:
    """Comparable across the two decoders (their ext types differ; NaN is not equal to itself)."""
    if isinstance(value, umsgpack.Ext):
        return ("ext", value.type, value.data)
    if isinstance(value, wire._Ext):
        return ("ext", value.code, value.data)
    if isinstance(value, float):
        return ("float", struct.pack(">d", value) if not math.isnan(value) else "nan")
    if isinstance(value, list | tuple):
        return (type(value).__name__, [_plain(item) for item in value])
    if isinstance(value, dict):
        # Sorted by the key's repr alone, a stable sort: distinct keys can share one (two NaN
        # keys), and their values need not be comparable with each other.
        pairs = [(repr(_plain(k)), _plain(v)) for k, v in value.items()]
        return ("map", sorted(pairs, key=lambda pair: pair[0]))
    return value


def _outcome(decode: object, data: bytes) -> object:
    try:
        return _plain(decode(data))  # type: ignore[operator]
    except RemoteProtocolError:
        return "refused"


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.binary(max_size=40)
    | st.text(max_size=12)
    | st.builds(umsgpack.Ext, st.integers(-128, 127), st.binary(max_size=20))
    | st.datetimes(timezones=st.just(datetime.UTC))
)
hashable = st.recursive(scalars, lambda inner: st.tuples(inner, inner), max_leaves=4)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(hashable, inner, max_size=4),
    max_leaves=40,
)


def _nested(depth: int, width: int) -> bytes:
    """Arrays `depth` deep, each level `width` wide: enough array headers to be checked."""
    inner = b"\x01"
    for _ in range(depth):
        inner = bytes([0x90 | width]) + inner + b"\x90" * (width - 1)
    return inner


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    body: bytes = umsgpack.packb(draw(values))
    shape = draw(st.sampled_from(["whole", "trailing", "mutated", "cut", "dup", "deep", "raw"]))
    if shape == "trailing":
        body += draw(st.binary(max_size=60) | st.builds(_nested, st.integers(3, 7), st.just(9)))
    elif shape == "mutated" and body:
        at = draw(st.integers(0, len(body) - 1))
        body = body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1 :]
    elif shape == "cut":
        body = body[: draw(st.integers(0, len(body)))]
    elif shape == "dup":  # one key twice; an array key (umsgpack: the later value wins)
        key = umsgpack.packb(draw(hashable | st.lists(scalars, max_size=3)))
        first = draw(st.sampled_from([body, _nested(draw(st.integers(3, 6)), 12)]))
        body = b"\x82" + key + first + key + umsgpack.packb(draw(values))
    elif shape == "deep":
        body = _nested(draw(st.integers(1, 8)), draw(st.integers(1, 15)))
    elif shape == "raw":
        body = draw(st.binary(max_size=200))
    return body


@settings(max_examples=1500, deadline=None)
@given(body=bodies())
@example(
    body=b"\x82\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00\x92\x01\x02\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00\xc0"
)
def test_bodies_decode_as_umsgpack_decoded_them(body: bytes) -> None:
    assert _outcome(wire._decode_body, body) == _outcome(_reference, body)


@settings(max_examples=200, deadline=None)
@given(msgid=ids, node_id=ids, keys=st.lists(ids, min_size=1, max_size=MAX_KEYS, unique=True))
def test_our_own_datagrams_decode_as_before(
    msgid: bytes, node_id: bytes, keys: list[bytes]
) -> None:
    for method in wire.METHODS:
        data = encode_request(msgid, method, node_id, b"".join(keys), b"t" * 8, 100)
        assert _outcome(wire._decode_body, data[21:]) == _outcome(_reference, data[21:])
