"""The DHT datagram format: encoding, and a parser that trusts nothing.

Owns: the byte layout of requests and replies. Trusts: nothing it parses. `decode_datagram` either
returns a `Request` or a `Reply` whose every field has the expected type and size, or raises
`RemoteProtocolError`; it is fuzzed for exactly that (tests/dht/test_hostile.py).

The framing is rpcudp's (kademlia's transport): one byte kind (0 request, 1 reply), a 20-byte
message id, then a msgpack body. A request body is `[method, [args...]]`; a reply body is a map
with short string keys. Contacts travel compactly, BEP 5 style: node = id(20) + address(4 or 16) +
port(2); the address family is the one of the socket that receives them, so an IPv4 node can never
be handed an IPv6 contact (or the reverse). A peer travels in the same form as a node: the id is
the one it announced with, so that a node recognises itself in a peer list whatever address the
list shows it under (every host of a fleet listens on the same port).

`get_peers` and `announce_peer` carry up to `MAX_KEYS` keys at once (concatenated), because apt
works in batches: a node that fetched 300 files announces 300 keys, and a fleet of a few machines
would otherwise send each of its neighbours one request per key. A `get_peers` reply lists the
contacts once (`nodes`) and, per key it answered (a prefix of those asked, as many as fit in one
datagram), the indices of the contacts nearest that key and the peers held for it.

The first byte of a request's padding carries flags (a padding of zeros has none, and older
nodes ignore its bytes; a ping with flags has the other arguments too, which older nodes also
ignore). Bit 0 says the sender is read-only (BEP 43): it found itself unreachable unasked
(behind NAT, reachability.py), so others answer it but do not add it to their routing tables,
where every lookup that reached it would wait out a timeout.

`dial_back` and `dial` tell a node whether others can reach it (dial.py, reachability.py): A asks
B (`dial_back`, with the token B gave it: A receives at that address); B asks contacts C of its
own (`dial`, carrying A's address and port, compact, and C's token if B has one); each C pings A,
and B's reply to A names the Cs that agreed. A ping from a C, a host A never sent to, can only
pass a NAT or firewall in front of A that lets strangers in.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

import msgpack

from dhtdeb.errors import RemoteProtocolError

ID_SIZE = 20
MSGID_SIZE = 20
HEADER_SIZE = 1 + MSGID_SIZE
MAX_DATAGRAM = 1500  # anything larger is refused unread
TOKEN_MAX = 32
PADDING_MAX = 1200
REQUEST = b"\x00"
REPLY = b"\x01"

METHODS = ("ping", "find_node", "get_peers", "announce_peer", "dial_back", "dial")
MAX_KEYS = 48  # keys in one get_peers / announce_peer request (48 * 20 bytes fit any path)
FLAG_READ_ONLY = 1  # in a request's padding, first byte (flags): BEP 43's read-only node

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Contact:
    """A DHT node as carried in a reply: not yet proven to exist."""

    node_id: bytes
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Request:
    msgid: bytes
    method: str
    node_id: bytes
    target: bytes | None = None  # find_node target / the first key of get_peers, announce_peer
    token: bytes | None = None
    keys: tuple[bytes, ...] = ()  # get_peers, announce_peer: every key asked about
    dial_to: Address | None = None  # dial: the address to ping
    read_only: bool = False  # the sender cannot be reached unasked: not for routing tables


@dataclass(frozen=True, slots=True)
class KeyAnswer:
    """What a get_peers reply says about one key: the contacts nearest it and its peers."""

    nodes: tuple[Contact, ...] = ()
    peers: tuple[Contact, ...] = ()


@dataclass(frozen=True, slots=True)
class Reply:
    msgid: bytes
    node_id: bytes
    nodes: tuple[Contact, ...] = ()  # find_node: the nearest contacts; get_peers: all mentioned
    peers: tuple[Contact, ...] = ()  # a one-key view of a get_peers reply (see `for_key`)
    token: bytes | None = None
    ok: bool = False
    answers: tuple[KeyAnswer, ...] = ()  # get_peers: per key asked, in order (maybe a prefix)
    stored: bytes = b""  # announce_peer of several keys: bit i (MSB first) set if key i was kept

    def stored_key(self, index: int) -> bool:
        """Whether an announce kept the index-th key (a one-key reply says it with `ok`)."""
        if not self.stored:
            return self.ok
        byte = index // 8
        return byte < len(self.stored) and bool(self.stored[byte] & (0x80 >> (index % 8)))

    def for_key(self, index: int) -> Reply | None:
        """The reply as if only the index-th key had been asked (None: not answered)."""
        if index >= len(self.answers):
            return None
        answer = self.answers[index]
        return Reply(self.msgid, self.node_id, answer.nodes, answer.peers, self.token, self.ok)


def address_size(family: socket.AddressFamily) -> int:
    return 16 if family == socket.AF_INET6 else 4


def family_of(host: str) -> socket.AddressFamily:
    """The address family of an IP literal; RemoteProtocolError when `host` is not one."""
    if not isinstance(host, str):
        raise RemoteProtocolError(f"not an IP address: {host!r}")
    return _family_of(host)


@functools.lru_cache(maxsize=4096)  # asked for every contact a node considers; parsing is slow
def _family_of(host: str) -> socket.AddressFamily:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise RemoteProtocolError(f"not an IP address: {host!r}") from None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def pack_address(host: str, port: int, family: socket.AddressFamily) -> bytes:
    return socket.inet_pton(family, host) + port.to_bytes(2, "big")


def encode_nodes(contacts: list[Contact], family: socket.AddressFamily) -> bytes:
    return b"".join(c.node_id + pack_address(c.host, c.port, family) for c in contacts)


def encode_bits(bits: list[bool]) -> bytes:
    field = bytearray(-(-len(bits) // 8))
    for index, bit in enumerate(bits):
        if bit:
            field[index // 8] |= 0x80 >> (index % 8)
    return bytes(field)


def encode_answers(
    contacts: list[Contact], answers: list[KeyAnswer], family: socket.AddressFamily
) -> tuple[bytes, list[list[bytes]]]:
    """The `nodes` and `keys` fields of a get_peers reply: contacts once, then per key the
    indices of its nearest contacts and its peers (compact, with their ids)."""
    if len(contacts) > 256:
        raise ValueError("a get_peers reply indexes at most 256 contacts")
    position = {contact: i for i, contact in enumerate(contacts)}
    sections = [
        [bytes(position[c] for c in answer.nodes), encode_nodes(list(answer.peers), family)]
        for answer in answers
    ]
    return encode_nodes(contacts, family), sections


def encode_request(
    msgid: bytes,
    method: str,
    node_id: bytes,
    target: bytes | None = None,
    token: bytes | None = None,
    padding: int = 0,
    *,
    read_only: bool = False,
) -> bytes:
    """`target`: the find_node target, the keys of get_peers / announce_peer (concatenated),
    the packed address of dial (`pack_address`), empty for dial_back. `read_only`: the sender
    cannot be reached unasked (BEP 43's read-only node): do not add it to routing tables."""
    args: list[Any] = [node_id]
    if method != "ping" or read_only:
        pad = b"\x00" * padding
        if read_only:  # the flags byte, in place of the first byte of padding
            pad = bytes([FLAG_READ_ONLY]) + pad[1:]
        args += [target, token, pad]
    packed: bytes = msgpack.packb([method, args], use_bin_type=True)
    return REQUEST + msgid + packed


def encode_reply(msgid: bytes, body: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return REPLY + msgid + packed


def _bytes(value: object, what: str, *, size: int | None = None, max_size: int = 64) -> bytes:
    if not isinstance(value, bytes):
        raise RemoteProtocolError(f"{what}: expected bytes")
    if size is not None and len(value) != size:
        raise RemoteProtocolError(f"{what}: expected {size} bytes, got {len(value)}")
    if len(value) > max_size:
        raise RemoteProtocolError(f"{what}: too long")
    return value


def _optional_token(value: object) -> bytes | None:
    if value is None:
        return None
    return _bytes(value, "token", max_size=TOKEN_MAX)


# The body is decoded by msgpack's C decoder (the pure-Python umsgpack, which rpcudp uses and which
# dhtdeb used before, cost a fifth of a node's time). It is told to accept and refuse what umsgpack
# did, so that a datagram means what it meant: bytes after the first object are ignored, map keys
# may be of any hashable type (an array key becomes a tuple), a key twice refuses the datagram, an
# ext of any code is a value, and a timestamp (ext -1) becomes a datetime. One difference is left:
# a timestamp whose nanoseconds field is 10**9 or more is refused (umsgpack carried the excess into
# the seconds). No field of ours is an ext, so such a datagram was of no use anyway.
# tests/dht/test_wire_msgpack.py compares the two decoders, and our encoding with umsgpack's.
#
# Our messages nest three deep (a reply's keys: [[nearest, peers], ...]). Deeper nesting is refused
# (umsgpack recursed once per level, and 1,400 bytes of b"\x91" cost it ~0.6 ms, twenty times a
# well-formed datagram of that size: bench/fuzz_dht.py). The rule is checked only for a body with
# enough bytes that could open a container (an array or map header); a body with few of them is
# cheap at any depth and is not checked.
MAX_DEPTH = 4
_CHEAP_NESTING = 32
_NOT_CONTAINER_BYTES = bytes(b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF))
# msgpack first byte -> (bytes of the length field, fixed payload size) for scalars; see _depth
_FIXED = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_FIXED |= {0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}
_SIZED = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}  # bin, str: length bytes
_EXT = {0xC7: 1, 0xC8: 2, 0xC9: 4}  # ext: length bytes (then a type byte)
_CONTAINERS = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}  # (length bytes, per)


def _check_depth(data: bytes, limit: int = MAX_DEPTH) -> None:
    """RemoteProtocolError when the msgpack in `data` nests deeper than `limit` (or a container
    promises more items than there are bytes left). Iterative: costs one step per item. Reads
    every byte of `data`, also past its first object."""
    pending: list[int] = []  # items still expected by each open container
    at, end = 0, len(data)
    while at < end:
        first = data[at]
        at += 1
        items = 0
        if first <= 0x7F or first >= 0xE0:
            pass
        elif 0x80 <= first <= 0x8F:
            items = 2 * (first & 0x0F)
        elif 0x90 <= first <= 0x9F:
            items = first & 0x0F
        elif 0xA0 <= first <= 0xBF:
            at += first & 0x1F
        elif first in _FIXED:
            at += _FIXED[first]
        elif first in _SIZED:
            size = _SIZED[first]
            at += size + int.from_bytes(data[at : at + size], "big")
        elif first in _EXT:
            size = _EXT[first]
            at += size + 1 + int.from_bytes(data[at : at + size], "big")
        elif first in _CONTAINERS:
            size, per = _CONTAINERS[first]
            items = per * int.from_bytes(data[at : at + size], "big")
            at += size
        else:
            raise RemoteProtocolError("bad msgpack: reserved byte")
        if pending:
            pending[-1] -= 1  # this object is one item of the innermost open container
        if items:
            if len(pending) >= limit:
                raise RemoteProtocolError("bad msgpack: nested too deep")
            if items > end - at:
                raise RemoteProtocolError("bad msgpack: container longer than the datagram")
            pending.append(items)
        while pending and not pending[-1]:
            pending.pop()


def _nests_deeper(value: object, limit: int) -> bool:
    """Whether a decoded `value` holds a non-empty container `limit` levels down: what
    `_check_depth` finds in the bytes of a body that is one object, nothing after it, and no
    map entry overwritten by a later one."""
    if type(value) is list:
        items: list[Any] = value
    elif type(value) is dict:
        items = [part for pair in value.items() for part in pair]
    else:
        return False
    if not items:
        return False
    return not limit or any(_nests_deeper(item, limit - 1) for item in items)


def _tuple_key(value: object) -> object:
    """An array used as a map key, as umsgpack made it hashable: a tuple, all the way down."""
    if type(value) is list:
        return tuple(_tuple_key(item) for item in value)
    return value


def _map(odd_keys: list[bool], pairs: list[tuple[object, object]]) -> dict[object, object]:
    """A map as umsgpack built it. An array key is noted in `odd_keys`: umsgpack let a later
    entry with the same array key overwrite an earlier one, whose depth then counts only in
    the bytes."""
    found: dict[object, object] = {}
    for key, value in pairs:
        if type(key) is list:
            odd_keys.append(True)
            key = _tuple_key(key)
        elif key in found:  # (an unhashable key raises TypeError here)
            raise RemoteProtocolError("bad msgpack: a map key twice")
        found[key] = value
    return found


@dataclass(frozen=True, slots=True)
class _Ext:
    """A msgpack ext value (none of our fields is one). msgpack's own `ExtType` refuses the
    codes below 0 that umsgpack let through."""

    code: int
    data: bytes


def _decode_body(data: bytes) -> object:
    odd_keys: list[bool] = []
    trailing = False
    try:
        body = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            timestamp=3,
            ext_hook=_Ext,
            object_pairs_hook=functools.partial(_map, odd_keys),
        )
    except msgpack.ExtraData as extra:  # umsgpack read the first object and no further
        body, trailing = extra.unpacked, True
    except RemoteProtocolError:
        raise
    except Exception as exc:  # the decoder's ValueErrors, TypeError for an unhashable key
        raise RemoteProtocolError(f"bad msgpack: {type(exc).__name__}") from None
    if len(data.translate(None, _NOT_CONTAINER_BYTES)) > _CHEAP_NESTING:
        if trailing or odd_keys:
            _check_depth(data)  # rare, and never from us
        elif _nests_deeper(body, MAX_DEPTH):
            raise RemoteProtocolError("bad msgpack: nested too deep")
    return body


def decode_datagram(data: bytes, family: socket.AddressFamily) -> Request | Reply:
    """Parse one datagram received on a socket of `family`."""
    if len(data) < HEADER_SIZE + 1:
        raise RemoteProtocolError("datagram too short")
    if len(data) > MAX_DATAGRAM:
        raise RemoteProtocolError("datagram too long")
    kind, msgid, body = data[:1], data[1:HEADER_SIZE], _decode_body(data[HEADER_SIZE:])
    if kind == REQUEST:
        return _decode_request(msgid, body, family)
    if kind == REPLY:
        return _decode_reply(msgid, body, family)
    raise RemoteProtocolError("unknown datagram kind")


def _decode_request(msgid: bytes, body: object, family: socket.AddressFamily) -> Request:
    if not isinstance(body, list) or len(body) != 2:
        raise RemoteProtocolError("request: expected [method, args]")
    method, args = body
    if method not in METHODS:
        raise RemoteProtocolError("request: unknown method")
    if not isinstance(args, list) or not args:
        raise RemoteProtocolError("request: args must be a non-empty list")
    node_id = _bytes(args[0], "node id", size=ID_SIZE)
    if len(args) > 4 or (method != "ping" and len(args) < 2):
        raise RemoteProtocolError("request: wrong number of args")
    padding = _bytes(args[3], "padding", max_size=PADDING_MAX) if len(args) > 3 else b""
    read_only = bool(padding) and padding[0] & FLAG_READ_ONLY != 0
    if method == "ping":
        return Request(msgid, method, node_id, read_only=read_only)
    token = _optional_token(args[2]) if len(args) > 2 else None
    if method in ("announce_peer", "dial_back") and token is None:
        raise RemoteProtocolError(f"{method} without token")
    if method == "dial_back":
        return Request(msgid, method, node_id, None, token, read_only=read_only)
    if method == "dial":
        address = _decode_address(args[1], family)
        return Request(msgid, method, node_id, None, token, dial_to=address, read_only=read_only)
    if method == "find_node":
        target = _bytes(args[1], "target", size=ID_SIZE)
        return Request(msgid, method, node_id, target, token, read_only=read_only)
    raw = _bytes(args[1], "keys", max_size=MAX_KEYS * ID_SIZE)
    if not raw or len(raw) % ID_SIZE:
        raise RemoteProtocolError("keys: not a whole number of 20-byte keys")
    keys = tuple(raw[i : i + ID_SIZE] for i in range(0, len(raw), ID_SIZE))
    if len(set(keys)) != len(keys):
        raise RemoteProtocolError("keys: a key asked twice")
    return Request(msgid, method, node_id, keys[0], token, keys, read_only=read_only)


def _decode_contacts(value: object, what: str, family: socket.AddressFamily) -> list[Contact]:
    raw = _bytes(value, what, max_size=MAX_DATAGRAM)
    size = address_size(family)
    step = ID_SIZE + size + 2
    if len(raw) % step:
        raise RemoteProtocolError(f"{what}: length is not a multiple of the entry size")
    found = []
    ntop = socket.inet_ntop
    for offset in range(0, len(raw), step):
        at = offset + ID_SIZE  # the address, then the port
        port = raw[at + size] << 8 | raw[at + size + 1]
        if port == 0:
            raise RemoteProtocolError(f"{what}: port 0")
        found.append(Contact(raw[offset:at], ntop(family, raw[at : at + size]), port))
    return found


def _decode_address(value: object, family: socket.AddressFamily) -> Address:
    size = address_size(family)
    raw = _bytes(value, "address", size=size + 2)
    port = raw[size] << 8 | raw[size + 1]
    if port == 0:
        raise RemoteProtocolError("address: port 0")
    return socket.inet_ntop(family, raw[:size]), port


def _decode_answers(
    value: object, contacts: list[Contact], family: socket.AddressFamily
) -> tuple[KeyAnswer, ...]:
    if not isinstance(value, list) or len(value) > MAX_KEYS:
        raise RemoteProtocolError("keys: expected a list of at most MAX_KEYS answers")
    answers = []
    for section in value:
        if not isinstance(section, list) or len(section) != 2:
            raise RemoteProtocolError("keys: an answer is [nearest, peers]")
        nearest = _bytes(section[0], "nearest", max_size=len(contacts))
        if any(i >= len(contacts) for i in nearest):
            raise RemoteProtocolError("nearest: index past the contacts")
        peers = _decode_contacts(section[1], "peers", family)
        answers.append(KeyAnswer(tuple(contacts[i] for i in nearest), tuple(peers)))
    return tuple(answers)


def _decode_reply(msgid: bytes, body: object, family: socket.AddressFamily) -> Reply:
    if not isinstance(body, dict):
        raise RemoteProtocolError("reply: expected a map")
    node_id = _bytes(body.get("id"), "reply id", size=ID_SIZE)
    raw_nodes = body.get("nodes")
    nodes = [] if raw_nodes is None else _decode_contacts(raw_nodes, "nodes", family)
    raw_answers = body.get("keys")
    answers = () if raw_answers is None else _decode_answers(raw_answers, nodes, family)
    token = _optional_token(body.get("token"))
    ok = body.get("ok", False)
    if not isinstance(ok, bool):
        raise RemoteProtocolError("ok: expected a boolean")
    raw_stored = body.get("stored")
    stored = b"" if raw_stored is None else _bytes(raw_stored, "stored", max_size=MAX_KEYS // 8)
    return Reply(msgid, node_id, tuple(nodes), (), token, ok, answers, stored)
