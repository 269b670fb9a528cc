"""The DHT datagram format: encoding, and a parser that trusts nothing.

Owns: the byte layout of requests and replies. Trusts: nothing it parses. `decode_datagram` either
returns a `Request` or a `Reply` whose every field has the expected type and size, or raises
`RemoteProtocolError`; it is fuzzed for exactly that (tests/dht/test_hostile.py).

The framing is rpcudp's (kademlia's transport): one byte kind (0 request, 1 reply), a 20-byte
message id, then a msgpack body. A request body is `[method, [args...]]`; a reply body is a map
with short string keys. Contacts travel compactly, BEP 5 style: node = id(20) + address(4 or 16) +
port(2), peer = address(4 or 16) + port(2); the address family is the one of the socket that
receives them, so an IPv4 node can never be handed an IPv6 contact (or the reverse).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

import umsgpack

from dhtdeb.errors import RemoteProtocolError

ID_SIZE = 20
MSGID_SIZE = 20
HEADER_SIZE = 1 + MSGID_SIZE
MAX_DATAGRAM = 1500  # anything larger is refused unread
TOKEN_MAX = 32
PADDING_MAX = 1200
REQUEST = b"\x00"
REPLY = b"\x01"

METHODS = ("ping", "find_node", "get_peers", "announce_peer")

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
    target: bytes | None = None  # find_node target / get_peers and announce_peer key
    token: bytes | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    msgid: bytes
    node_id: bytes
    nodes: tuple[Contact, ...] = ()
    peers: tuple[Address, ...] = ()
    token: bytes | None = None
    ok: bool = False


def address_size(family: socket.AddressFamily) -> int:
    return 16 if family == socket.AF_INET6 else 4


def family_of(host: str) -> socket.AddressFamily:
    """The address family of an IP literal; RemoteProtocolError when `host` is not one."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise RemoteProtocolError(f"not an IP address: {host!r}") from None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def pack_address(host: str, port: int, family: socket.AddressFamily) -> bytes:
    return socket.inet_pton(family, host) + port.to_bytes(2, "big")


def unpack_address(data: bytes, family: socket.AddressFamily) -> Address:
    size = address_size(family)
    host = socket.inet_ntop(family, data[:size])
    port = int.from_bytes(data[size : size + 2], "big")
    return host, port


def encode_nodes(contacts: list[Contact], family: socket.AddressFamily) -> bytes:
    return b"".join(c.node_id + pack_address(c.host, c.port, family) for c in contacts)


def encode_request(
    msgid: bytes,
    method: str,
    node_id: bytes,
    target: bytes | None = None,
    token: bytes | None = None,
    padding: int = 0,
) -> bytes:
    args: list[Any] = [node_id]
    if method != "ping":
        args += [target, token, b"\x00" * padding]
    packed: bytes = umsgpack.packb([method, args])
    return REQUEST + msgid + packed


def encode_reply(msgid: bytes, body: dict[str, Any]) -> bytes:
    packed: bytes = umsgpack.packb(body)
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


def _decode_body(data: bytes) -> object:
    try:
        return umsgpack.unpackb(data)
    except Exception as exc:  # umsgpack raises a zoo of types, and RecursionError on deep nesting
        raise RemoteProtocolError(f"bad msgpack: {type(exc).__name__}") from None


def decode_datagram(data: bytes, family: socket.AddressFamily) -> Request | Reply:
    """Parse one datagram received on a socket of `family`."""
    if len(data) < HEADER_SIZE + 1:
        raise RemoteProtocolError("datagram too short")
    if len(data) > MAX_DATAGRAM:
        raise RemoteProtocolError("datagram too long")
    kind, msgid, body = data[:1], data[1:HEADER_SIZE], _decode_body(data[HEADER_SIZE:])
    if kind == REQUEST:
        return _decode_request(msgid, body)
    if kind == REPLY:
        return _decode_reply(msgid, body, family)
    raise RemoteProtocolError("unknown datagram kind")


def _decode_request(msgid: bytes, body: object) -> Request:
    if not isinstance(body, list) or len(body) != 2:
        raise RemoteProtocolError("request: expected [method, args]")
    method, args = body
    if method not in METHODS:
        raise RemoteProtocolError("request: unknown method")
    if not isinstance(args, list) or not args:
        raise RemoteProtocolError("request: args must be a non-empty list")
    node_id = _bytes(args[0], "node id", size=ID_SIZE)
    if method == "ping":
        return Request(msgid, method, node_id)
    if not 2 <= len(args) <= 4:
        raise RemoteProtocolError("request: wrong number of args")
    target = _bytes(args[1], "target", size=ID_SIZE)
    token = _optional_token(args[2]) if len(args) > 2 else None
    if len(args) > 3:
        _bytes(args[3], "padding", max_size=PADDING_MAX)
    if method == "announce_peer" and token is None:
        raise RemoteProtocolError("announce_peer without token")
    return Request(msgid, method, node_id, target, token)


def _decode_reply(msgid: bytes, body: object, family: socket.AddressFamily) -> Reply:
    if not isinstance(body, dict):
        raise RemoteProtocolError("reply: expected a map")
    node_id = _bytes(body.get("id"), "reply id", size=ID_SIZE)
    nodes: tuple[Contact, ...] = ()
    peers: tuple[Address, ...] = ()
    raw_nodes = body.get("nodes")
    if raw_nodes is not None:
        raw = _bytes(raw_nodes, "nodes", max_size=MAX_DATAGRAM)
        step = ID_SIZE + address_size(family) + 2
        if len(raw) % step:
            raise RemoteProtocolError("nodes: length is not a multiple of the entry size")
        found = []
        for offset in range(0, len(raw), step):
            host, port = unpack_address(raw[offset + ID_SIZE : offset + step], family)
            if port == 0:
                raise RemoteProtocolError("nodes: port 0")
            found.append(Contact(raw[offset : offset + ID_SIZE], host, port))
        nodes = tuple(found)
    raw_peers = body.get("peers")
    if raw_peers is not None:
        if not isinstance(raw_peers, list):
            raise RemoteProtocolError("peers: expected a list")
        size = address_size(family) + 2
        found_peers = []
        for item in raw_peers:
            host, port = unpack_address(_bytes(item, "peer", size=size), family)
            if port == 0:
                raise RemoteProtocolError("peers: port 0")
            found_peers.append((host, port))
        peers = tuple(found_peers)
    token = _optional_token(body.get("token"))
    ok = body.get("ok", False)
    if not isinstance(ok, bool):
        raise RemoteProtocolError("ok: expected a boolean")
    return Reply(msgid, node_id, nodes, peers, token, ok)
