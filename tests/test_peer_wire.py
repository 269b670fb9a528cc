"""The peer protocol v1 on the wire (dhtdeb/swarm/wire.py): what one end encodes the other parses
back unchanged, and every parser, fed anything a hostile peer could send, returns a value of its
documented type within its bounds or raises PeerWireError, never another exception.

Hypothesis runs derandomized (the same examples every run) without an example database, as the
project's other fuzz tests do; a failure shows the falsifying example.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Literal, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtdeb.errors import PeerWireError, RemoteProtocolError
from dhtdeb.swarm.pieces import DIGEST_SIZE, PieceList, piece_count
from dhtdeb.swarm.wire import (
    FILES,
    HAVE_ALL,
    HAVE_HELD,
    HAVE_PATH,
    MAX_HAVE_QUERY,
    PIECES,
    Resource,
    decode_have_answer,
    decode_have_query,
    encode_have_answer,
    encode_have_query,
    fetching_header,
    have_bitfield,
    is_sha256,
    node_header,
    parse_fetching,
    parse_have,
    parse_node,
    parse_piece_list,
    parse_relayed,
    parse_resource,
    resource_path,
)

T = TypeVar("T")
FUZZ = settings(max_examples=400, derandomize=True, database=None, deadline=None)
ROUND_TRIP = settings(max_examples=150, derandomize=True, database=None, deadline=None)

DIGITS = st.text(st.characters(categories=("Nd", "No")), min_size=1, max_size=4)  # any script
PIECE_COUNTS = st.integers(min_value=1, max_value=2048)  # 2 GiB files at most; the bound is ours
# Header values a peer could send: any text (surrogates included: aiohttp decodes header bytes
# with surrogateescape), text from the alphabets v1 uses, digits of every script, and well-formed
# values bent slightly.
HEADERS = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=80),
    st.text("0123456789-abcdefABCDEF ", max_size=80),
    st.tuples(DIGITS, DIGITS).map("-".join),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \t", max_size=400),
    st.binary(max_size=300).map(lambda raw: base64.b64encode(raw).decode("ascii")),
    st.tuples(st.integers(-5, 10**17), st.integers(-5, 10**17)).map(lambda ab: f"{ab[0]}-{ab[1]}"),
    st.just(HAVE_ALL),
)
MAYBE_HEADERS = st.none() | HEADERS
SHA256S = st.binary(min_size=32, max_size=32).map(bytes.hex)


def parsed(parse: Callable[[], T]) -> T | PeerWireError:
    """What `parse` returns, or the PeerWireError it raises; any other exception fails the test."""
    try:
        return parse()
    except PeerWireError as exc:
        return exc


# -- round trips ----------------------------------------------------------------------------------


@ROUND_TRIP
@given(st.data(), PIECE_COUNTS)
def test_a_have_bitfield_parses_back_to_the_pieces_held(data: st.DataObject, pieces: int) -> None:
    held = data.draw(st.frozensets(st.integers(0, pieces - 1), max_size=64))
    assert parse_have(have_bitfield(held, pieces), pieces) == held
    assert parse_have(HAVE_ALL, pieces) is None


@ROUND_TRIP
@given(st.data(), PIECE_COUNTS)
def test_relayed_pieces_parse_back_when_they_are_held(data: st.DataObject, pieces: int) -> None:
    held = data.draw(st.frozensets(st.integers(0, pieces - 1), max_size=64))
    relayed = data.draw(st.frozensets(st.sampled_from(sorted(held)))) if held else frozenset()
    assert parse_relayed(have_bitfield(relayed, pieces), pieces, held) == relayed
    assert parse_relayed(None, pieces, held) == frozenset()


@ROUND_TRIP
@given(st.data(), PIECE_COUNTS)
def test_a_fetching_run_parses_back(data: st.DataObject, pieces: int) -> None:
    first = data.draw(st.integers(0, pieces - 1))
    last = data.draw(st.integers(first, pieces - 1))
    assert parse_fetching(fetching_header(range(first, last + 1)), pieces) == range(first, last + 1)
    assert parse_fetching(None, pieces) == range(0)


@ROUND_TRIP
@given(st.binary(min_size=4, max_size=32))
def test_a_node_id_parses_back(node: bytes) -> None:
    assert parse_node(node_header(node)) == node
    assert parse_node(node_header(node).upper()) == node


@ROUND_TRIP
@given(st.binary(max_size=40 * DIGEST_SIZE), st.integers(0, 40 << 20))
def test_a_piece_list_parses_back(seed: bytes, size: int) -> None:
    count = piece_count(size)
    digests = tuple(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(count))
    pieces = PieceList(size, digests)
    assert parse_piece_list(size, pieces.to_bytes()) == pieces


@ROUND_TRIP
@given(st.lists(SHA256S, min_size=1, max_size=MAX_HAVE_QUERY))
def test_a_have_query_and_its_answer_parse_back(sha256s: list[str]) -> None:
    assert decode_have_query(encode_have_query(sha256s)) == sha256s
    states = [hashlib.sha256(sha.encode()).digest()[0] % (HAVE_HELD + 1) for sha in sha256s]
    assert decode_have_answer(encode_have_answer(states), len(states)) == states


@ROUND_TRIP
@given(SHA256S, st.sampled_from([PIECES, FILES]))
def test_a_resource_path_parses_back(sha256: str, kind: Literal["pieces", "files"]) -> None:
    path = resource_path(kind, sha256)
    assert parse_resource(path) == parse_resource(path + "?x=1") == Resource(kind, sha256)
    assert is_sha256(sha256) and not is_sha256(sha256[1:]) and not is_sha256(sha256 + "0")
    assert is_sha256(sha256.upper()) == (sha256.upper() == sha256)  # lowercase only
    assert parse_resource(HAVE_PATH) is None


def test_the_one_error_type_is_a_remote_protocol_error() -> None:
    """Callers that catch RemoteProtocolError (the proxy's and the store's) still do."""
    assert issubclass(PeerWireError, RemoteProtocolError)
    with pytest.raises(PeerWireError):
        parse_have(None, 1)  # a piece list answer without its Have header


@pytest.mark.parametrize(
    "header",
    [
        "\N{SUPERSCRIPT TWO}-3",
        "3-\N{SUPERSCRIPT TWO}",
        "\u0663-\u0665",
        "\uff13-\uff14",
        " 3-4",
        "+3-4",
        "3-4\n",
    ],
)
def test_a_fetching_header_is_ascii_digits_only(header: str) -> None:
    """int() takes digits of any script (Arabic-Indic, fullwidth), and str.isdigit() takes a
    superscript two, which int() refuses with ValueError."""
    assert parse_fetching(header, 10) is None


# -- fuzz: anything in, a value or PeerWireError out ---------------------------------------------


@FUZZ
@given(MAYBE_HEADERS, PIECE_COUNTS)
def test_fuzz_have(header: str | None, pieces: int) -> None:
    result = parsed(lambda: parse_have(header, pieces))
    if result is None or isinstance(result, PeerWireError):
        return
    assert isinstance(result, frozenset) and all(0 <= i < pieces for i in result)


@FUZZ
@given(MAYBE_HEADERS, PIECE_COUNTS, st.none() | st.frozensets(st.integers(0, 2047), max_size=32))
def test_fuzz_relayed(header: str | None, pieces: int, held: frozenset[int] | None) -> None:
    result = parsed(lambda: parse_relayed(header, pieces, held))
    assert not isinstance(result, PeerWireError)  # it says None instead
    if result is not None:
        assert isinstance(result, frozenset) and all(0 <= i < pieces for i in result)
        assert not result or (held is not None and result <= held)


@FUZZ
@given(MAYBE_HEADERS, PIECE_COUNTS)
def test_fuzz_fetching(header: str | None, pieces: int) -> None:
    result = parsed(lambda: parse_fetching(header, pieces))
    assert not isinstance(result, PeerWireError)  # it says None instead
    if result is not None:
        assert isinstance(result, range) and result.step == 1
        assert not result or 0 <= result.start < result.stop <= pieces
        assert result or header is None


@FUZZ
@given(MAYBE_HEADERS)
def test_fuzz_node(header: str | None) -> None:
    result = parsed(lambda: parse_node(header))
    assert not isinstance(result, PeerWireError)  # it says None instead
    if result is not None:
        assert isinstance(result, bytes)
        assert 4 <= len(result) <= 32 if header is not None else result == b""


@FUZZ
@given(st.binary(max_size=(MAX_HAVE_QUERY + 2) * DIGEST_SIZE))
def test_fuzz_have_query(body: bytes) -> None:
    result = parsed(lambda: decode_have_query(body))
    if isinstance(result, PeerWireError):
        return
    assert 1 <= len(result) <= MAX_HAVE_QUERY and all(is_sha256(sha) for sha in result)


@FUZZ
@given(st.binary(max_size=MAX_HAVE_QUERY + 2), st.integers(1, MAX_HAVE_QUERY))
def test_fuzz_have_answer(data: bytes, count: int) -> None:
    result = parsed(lambda: decode_have_answer(data, count))
    if isinstance(result, PeerWireError):
        return
    assert len(result) == count and all(0 <= state <= HAVE_HELD for state in result)


@FUZZ
@given(st.binary(max_size=8 * DIGEST_SIZE + 3), st.integers(0, 10 << 20))
def test_fuzz_piece_list(body: bytes, size: int) -> None:
    result = parsed(lambda: parse_piece_list(size, body))
    if isinstance(result, PeerWireError):
        return
    assert result.size == size and len(result) == piece_count(size)
    assert all(len(digest) == DIGEST_SIZE for digest in result.digests)


@FUZZ
@given(
    st.one_of(
        st.text(st.characters(exclude_categories=()), max_size=120),
        st.builds(
            lambda kind, name, tail: f"/v1/{kind}/{name}{tail}",
            st.sampled_from([PIECES, FILES, "have", "", "store"]),
            st.one_of(SHA256S, st.text(max_size=70)),
            st.sampled_from(["", "/", "?", "?a=b", "%00", "/.."]),
        ),
    )
)
def test_fuzz_resource(target: str) -> None:
    result = parsed(lambda: parse_resource(target))
    assert not isinstance(result, PeerWireError)  # it says None instead
    if result is not None:
        assert result.kind in (PIECES, FILES) and "/" not in result.name
        assert "?" not in result.name and isinstance(is_sha256(result.name), bool)
