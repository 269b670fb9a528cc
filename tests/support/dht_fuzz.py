"""Hostile DHT datagrams, seeded, and a driver that sends them to a live node over loopback UDP.

Owns: the fuzz generator shared by tests/adversarial/test_dht_fuzz.py (a sample in `make test`)
and bench/fuzz_dht.py (a million datagrams); the bench imports it from here, tests never import
bench. Trusts: nothing the node sends back (its requests to our sockets are answered with fuzzed
replies).

Unlike most of `support`, this module imports dhtdeb: mutated valid messages start from the real
encoder (`dhtdeb.dht.wire`), and the driver counts what reaches the node's protocol object (a tap
on `datagram_received`, the method asyncio calls for each datagram) so that it can pace itself on
what the node has read instead of on sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import umsgpack

from dhtdeb.dht.wire import (
    ID_SIZE,
    MAX_KEYS,
    METHODS,
    Contact,
    KeyAnswer,
    Request,
    decode_datagram,
    encode_answers,
    encode_bits,
    encode_nodes,
    encode_reply,
    encode_request,
    pack_address,
)
from dhtdeb.errors import RemoteProtocolError

KINDS = (
    "random",  # random bytes of random length
    "truncated",  # a valid message cut short
    "mutated",  # a valid message with bytes flipped, replaced, inserted or deleted
    "nested",  # deeply nested msgpack, and length fields that promise more than is there
    "oversized",  # larger than any datagram the node accepts
    "bad_request",  # a well-framed request with a bad field
    "good_request",  # a well-formed request with random ids, keys, tokens
    "stray_reply",  # a well-formed reply to a request never made
)


def rss_kib(pid: int | str = "self") -> int:
    """VmRSS of a process in KiB (0 where /proc is missing)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class DatagramFuzzer:
    """Seeded generator of hostile datagrams for a node of one address family."""

    def __init__(self, rng: random.Random, family: socket.AddressFamily = socket.AF_INET) -> None:
        self.rng = rng
        self.family = family
        self._kinds = {
            "random": self._random,
            "truncated": self._truncated,
            "mutated": self._mutated,
            "nested": self._nested,
            "oversized": self._oversized,
            "bad_request": self._bad_request,
            "good_request": self._good_request,
            "stray_reply": self._stray_reply,
        }

    def next(self) -> tuple[str, bytes]:
        kind = self.rng.choice(KINDS)
        return kind, self._kinds[kind]()

    # -- building blocks ---------------------------------------------------------------------
    def _id(self) -> bytes:
        return self.rng.randbytes(ID_SIZE)

    def _contact(self) -> Contact:
        rng = self.rng
        if self.family == socket.AF_INET6:
            host = socket.inet_ntop(socket.AF_INET6, rng.randbytes(16))
        else:
            host = socket.inet_ntop(socket.AF_INET, rng.randbytes(4))
        return Contact(self._id(), host, rng.randrange(1, 65536))

    def valid_request(self) -> bytes:
        rng = self.rng
        method = rng.choice(METHODS)
        keys = b"".join(self._id() for _ in range(rng.randrange(1, 6)))
        target = self._id() if method == "find_node" else keys
        if method == "dial":
            contact = self._contact()
            target = pack_address(contact.host, contact.port, self.family)
        elif method == "dial_back":
            target = b""
        needs_token = method in ("announce_peer", "dial_back")
        token = rng.randbytes(8) if needs_token or rng.random() < 0.3 else None
        return encode_request(
            self._id(),
            method,
            self._id(),
            target,
            token,
            rng.choice((0, 0, 40, 400)),
            read_only=rng.random() < 0.2,
        )

    def valid_reply(self, msgid: bytes | None = None) -> bytes:
        rng = self.rng
        msgid = msgid or self._id()
        body: dict[str, Any] = {"id": self._id()}
        shape = rng.randrange(4)
        if shape == 1:  # find_node
            body["nodes"] = encode_nodes([self._contact() for _ in range(8)], self.family)
        elif shape == 2:  # get_peers for a few keys
            contacts = [self._contact() for _ in range(rng.randrange(0, 9))]
            answers = [
                KeyAnswer(
                    tuple(rng.sample(contacts, rng.randrange(0, len(contacts) + 1))),
                    tuple(self._contact() for _ in range(rng.randrange(0, 5))),
                )
                for _ in range(rng.randrange(1, 4))
            ]
            body["nodes"], body["keys"] = encode_answers(contacts, answers, self.family)
        elif shape == 3:  # announce_peer
            body["ok"] = rng.random() < 0.5
            body["stored"] = encode_bits([rng.random() < 0.5 for _ in range(rng.randrange(9))])
        if rng.random() < 0.7:
            body["token"] = rng.randbytes(8)
        return encode_reply(msgid, body)

    def _valid(self) -> bytes:
        return self.valid_request() if self.rng.random() < 0.5 else self.valid_reply()

    # -- kinds -------------------------------------------------------------------------------
    def _random(self) -> bytes:
        return self.rng.randbytes(self.rng.randrange(0, 1500))

    def _truncated(self) -> bytes:
        data = self._valid()
        return data[: self.rng.randrange(0, len(data))]

    def _mutated(self) -> bytes:
        rng = self.rng
        data = bytearray(self._valid())
        for _ in range(rng.randrange(1, 9)):
            if not data:
                break
            at = rng.randrange(len(data))
            action = rng.randrange(4)
            if action == 0:
                data[at] ^= 1 << rng.randrange(8)
            elif action == 1:
                data[at] = rng.randrange(256)
            elif action == 2:
                data[at:at] = rng.randbytes(rng.randrange(1, 8))
            else:
                del data[at : at + rng.randrange(1, 8)]
        return bytes(data)

    def _nested(self) -> bytes:
        rng = self.rng
        header = rng.choice((b"\x00", b"\x01")) + self._id()
        depth = rng.randrange(100, 1450)
        body = rng.choice(
            (
                b"\x91" * depth,  # [[[[...]]]]
                b"\x81\xa1k" * (depth // 3),  # {"k": {"k": ...}}
                b"\xdd\xff\xff\xff\xff",  # array32 promising 4 billion elements
                b"\xdf\xff\xff\xff\xff",  # map32 promising as many pairs
                b"\xc6\xff\xff\xff\xff" + b"x" * 16,  # bin32 of 4 GiB, 16 bytes given
                b"\x92\xa4ping\x91" + b"\x91" * depth,  # a request whose args nest
                b"\xc7\xff\x05" + b"e" * 10,  # ext8 promising 255 bytes
            )
        )
        return header + body

    def _oversized(self) -> bytes:
        rng = self.rng
        size = rng.randrange(1501, 9000)
        if rng.random() < 0.5:
            return rng.randbytes(size)
        padding = size // 2
        return encode_request(self._id(), "find_node", self._id(), self._id(), None, padding * 2)

    def _bad_request(self) -> bytes:
        rng = self.rng
        node_id = self._id()
        key = self._id()
        bad: list[object] = [
            ["ping", [rng.randbytes(rng.choice((0, 19, 21, 64)))]],
            ["find_node", [node_id, rng.randbytes(rng.choice((0, 19, 21)))]],
            ["get_peers", [node_id, key[:-1] + key]],  # not whole keys
            ["get_peers", [node_id, key + key]],  # a key asked twice
            ["get_peers", [node_id, b"".join(self._id() for _ in range(MAX_KEYS + 1))]],
            ["get_peers", [node_id, b""]],
            ["get_peers", [node_id, key, rng.randbytes(33)]],  # token too long
            ["get_peers", [node_id, key, 7]],
            ["get_peers", [node_id, key, None, rng.randbytes(1300)]],  # padding too long
            ["announce_peer", [node_id, key]],  # no token
            ["announce_peer", [node_id, key, None, b""]],
            ["find_node", [node_id, key, None, b"", b"extra"]],
            ["store", [node_id, key, b"value"]],  # stock kademlia's method
            [b"ping", [node_id]],
            ["ping", {"id": node_id}],
            ["ping", []],
            ["ping"],
            ["ping", [node_id], "third"],
            {"ping": [node_id]},
            [rng.randrange(-(2**63), 2**63), [node_id]],
            ["find_node", [node_id, rng.random()]],
            ["find_node", [node_id, [key]]],
            ["find_node", [node_id, key.decode("latin-1")]],
        ]
        return b"\x00" + self._id() + umsgpack.packb(rng.choice(bad))

    def _good_request(self) -> bytes:
        return self.valid_request()

    def _stray_reply(self) -> bytes:
        return self.valid_reply()

    def reply_to(self, msgid: bytes) -> bytes:
        """A reply to a real request of the node's (matching id), hostile in shape or content."""
        rng = self.rng
        choice = rng.randrange(4)
        if choice == 0:
            return self.valid_reply(msgid)
        if choice == 1:
            return b"\x01" + msgid + self._mutated()[21:]
        if choice == 2:
            return b"\x01" + msgid + self._nested()[21:]
        body: dict[str, object] = {
            "id": rng.randbytes(rng.choice((19, 20, 21))),
            "nodes": rng.randbytes(rng.randrange(0, 80)),
            "keys": [[rng.randbytes(3), rng.randbytes(26)]],
            "token": rng.choice((rng.randbytes(40), 3, None, "t")),
            "ok": rng.choice((True, 1, "yes", None)),
        }
        return encode_reply(msgid, body)


# -- watching the node -----------------------------------------------------------------------


class LogTally(logging.Handler):
    """Counts log records by level; records with a traceback; keeps the first few messages."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.by_level: Counter[str] = Counter()
        self.tracebacks = 0
        self.samples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.by_level[record.levelname] += 1
        text = record.getMessage()
        if record.exc_info or record.stack_info or "Traceback" in text:
            self.tracebacks += 1
        if record.levelno >= logging.INFO and len(self.samples) < 20:
            self.samples.append(f"{record.levelname} {record.name}: {text}")

    def lines(self, level: int = logging.INFO) -> int:
        """Records at `level` or above (what a production log would show)."""
        return sum(n for name, n in self.by_level.items() if logging.getLevelName(name) >= level)


class ReceiveTap:
    """Counts the datagrams a node's protocol object gets and the time it spends on them, and
    wakes a waiter once a number of them has arrived (pacing on what the node has read)."""

    def __init__(self, protocol: Any) -> None:
        self.received = 0
        self.seconds = 0.0
        self._original = protocol.datagram_received
        self._target = 0
        self._arrived: asyncio.Event | None = None
        protocol.datagram_received = self._tapped

    def _tapped(self, data: bytes, addr: Any) -> None:
        started = time.perf_counter()
        try:
            self._original(data, addr)
        finally:
            self.seconds += time.perf_counter() - started
            self.received += 1
            if self._arrived is not None and self.received >= self._target:
                self._arrived.set()

    async def until(self, count: int, guard: float) -> bool:
        """Wait until `count` datagrams arrived; False if `guard` seconds passed first (the
        kernel dropped some: the caller re-bases its count)."""
        if self.received >= count:
            return True
        self._target = count
        self._arrived = asyncio.Event()
        try:
            async with asyncio.timeout(guard):
                await self._arrived.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self._arrived = None


@dataclass
class FuzzReport:
    sent: Counter[str] = field(default_factory=Counter)
    replies_to_node: int = 0  # node requests we answered with a fuzzed reply
    not_received: int = 0  # presumed dropped by the kernel (a window not read within the guard)
    seconds: float = 0.0


class FuzzSender:
    """Sends fuzzed datagrams from `sources` loopback sockets to a node, at most `window`
    unread at a time; answers the node's own requests to those sockets with fuzzed replies,
    sometimes from another of our sockets (an unexpected address)."""

    def __init__(
        self,
        tap: ReceiveTap,
        target: tuple[str, int],
        fuzzer: DatagramFuzzer,
        *,
        sources: int = 16,
        window: int = 64,
        guard: float = 2.0,
    ) -> None:
        self.tap = tap
        self.target = target
        self.fuzzer = fuzzer
        self.window = window
        self.guard = guard
        self.sockets = []
        for _ in range(sources):
            sock = socket.socket(fuzzer.family, socket.SOCK_DGRAM)
            sock.bind((target[0], 0))
            sock.setblocking(False)
            self.sockets.append(sock)
        self.report = FuzzReport()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()

    def _answer_node(self) -> int:
        """Answer what the node asked our sockets (its verification pings): datagrams sent."""
        rng = self.fuzzer.rng
        sent = 0
        for sock in self.sockets:
            while True:
                try:
                    data = sock.recv(2048)
                except BlockingIOError:
                    break
                try:
                    message = decode_datagram(data, self.fuzzer.family)
                except RemoteProtocolError:
                    continue
                if not isinstance(message, Request):
                    continue
                sender = sock if rng.random() < 0.8 else rng.choice(self.sockets)
                self._send(sender, self.fuzzer.reply_to(message.msgid))
                self.report.replies_to_node += 1
                sent += 1
        return sent

    def _send(self, sock: socket.socket, data: bytes) -> bool:
        try:
            sock.sendto(data, self.target)
            return True
        except BlockingIOError:
            return False
        except OSError:  # EMSGSIZE and friends: the datagram never left
            return False

    async def run(self, count: int, progress: Any = None) -> FuzzReport:
        rng = self.fuzzer.rng
        started = time.perf_counter()
        expected = self.tap.received
        done = 0
        while done < count:
            batch = min(self.window, count - done)
            for _ in range(batch):
                kind, data = self.fuzzer.next()
                if self._send(rng.choice(self.sockets), data):
                    expected += 1
                    self.report.sent[kind] += 1
                else:
                    self.report.sent["not_sent"] += 1
            done += batch
            expected += self._answer_node()
            if not await self.tap.until(expected, self.guard):
                self.report.not_received += expected - self.tap.received
                expected = self.tap.received
            if progress is not None:
                progress(done)
        self.report.seconds = time.perf_counter() - started
        return self.report


# -- the node under fuzz, and a good client -------------------------------------------------


async def open_fuzz_target(tmp: Path, rng: random.Random, neighbours: int = 8) -> list[Any]:
    """A live node on 127.0.0.1 (real UDP, port 0) and `neighbours` honest nodes that joined
    through it and announced a key each, so that its routing table and peer store are not
    empty. The node under fuzz is the first of the list."""
    from dhtdeb.dht import DhtConfig, open_dht
    from dhtdeb.netaddr import HostPort

    async def spawn(name: str, bootstrap: tuple[HostPort, ...]) -> Any:
        return await open_dht(
            DhtConfig(HostPort("127.0.0.1", 0), tmp / name, bootstrap=bootstrap, lan=False),
            rng=random.Random(rng.getrandbits(64)),
            maintenance=False,
        )

    node = await spawn("fuzzed", ())
    nodes = [node]
    for index in range(neighbours):
        nodes.append(await spawn(f"neighbour{index}", (node.address,)))
    for index, neighbour in enumerate(nodes[1:]):
        await neighbour.announce(f"{index:064x}")
    return nodes


async def good_client_answered(address: tuple[str, int], guard: float = 5.0) -> tuple[bool, int]:
    """A well-behaved client on a fresh socket: (the node answered a ping, the number of
    contacts in its answer to a find_node)."""
    import asyncio_dgram

    from dhtdeb.dht.wire import Reply

    stream = await asyncio_dgram.connect(address)
    rng = random.Random(0)
    me = rng.randbytes(ID_SIZE)

    async def ask(method: str, target: bytes | None) -> Reply | None:
        msgid = rng.randbytes(ID_SIZE)
        await stream.send(encode_request(msgid, method, me, target, None, 400))
        try:
            async with asyncio.timeout(guard):
                while True:
                    data, _ = await stream.recv()
                    message = decode_datagram(data, socket.AF_INET)
                    if isinstance(message, Reply) and message.msgid == msgid:
                        return message
        except TimeoutError:
            return None

    try:
        ping = await ask("ping", None)
        found = await ask("find_node", rng.randbytes(ID_SIZE))
    finally:
        stream.close()
    return ping is not None, (len(found.nodes) if found is not None else -1)
