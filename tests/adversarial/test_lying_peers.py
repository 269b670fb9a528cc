"""Lying and failing peers: real `dhtdeb bootstrap`, real `dhtdeb serve` daemons, real apt, and an
in-process evil peer (tests/support/evil_peer.py) that is found through the real DHT.

What every test checks, from docs/swarm.md ("Trust rules for the downloader"):
- apt gets the right files (SHA256 of what `apt-get download` wrote);
- a lie (a piece that fails a checked list entry, a list the mirror contradicts) counts in
  `verify_failures.peer`; misbehaviour (wrong size, short or endless body, stall) does not, it
  only bans (rule 4); a peer that refuses connections is merely unavailable;
- a banned peer gets no further request from the downloader: after dt-big, the downloader fetches
  a small file the liar also announces, and the liar must not be asked for it;
- the cost is bounded: the mirror bytes for dt-big during B's fetch, per test (PIECE = 1 MiB, the
  protocol's piece size; SIZE = dt-big's size):
  * liar alone, caught before any of its pieces is used: <= SIZE + AUDIT (a plain mirror
    download, plus the 16 KiB block that audited the liar's list);
  * liar alone, honest for pieces 0..k-1 and lying at piece k:
    <= AUDIT + SIZE - k*PIECE + INFLIGHT*PIECE (an audit block checks its list, pieces before k
    come from it, everything from k on from the mirror; and the mirror stream, started while the
    liar was slow, reads its range through pieces the liar has in flight, at most INFLIGHT =
    SchedulerConfig.max_requests_per_peer of them: a CI run under load saw two);
  * liar beside an honest peer A: <= PIECE (A's identical list corroborates the liar's, or the
    mirror referees the one disputed piece);
  * honest A killed mid-transfer: <= SIZE - B's bytes from peers + 2*PIECE.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import wait_until
from support.apt import AptClient, AptClientFactory, ProxyMode
from support.archive import MiB, SignedArchive
from support.daemon import BootstrapProcess, DaemonProcess
from support.evil_peer import EvilPeer, Lie, files_of
from support.mirror import Mirror
from support.swarm import SwarmNode, bootstrap_node, swarm_node, wait_until_found

from dhtdeb.swarm.actions import SchedulerConfig
from dhtdeb.swarm.scheduler import AUDIT_BLOCK

__all__ = ["bootstrap_node", "swarm_node"]  # fixtures, which pytest finds by name

PIECE = MiB  # protocol v1 piece size (docs/swarm.md, dhtdeb/swarm/pieces.py)
SMALL = "dt-foxtrot"  # 200 kB: a one-piece file, whose piece hash is its signed SHA256
LIE_AT = 12  # the piece a partly honest liar lies about (dt-big has 21 pieces)
INFLIGHT = SchedulerConfig().max_requests_per_peer

EvilFactory = Callable[..., EvilPeer]


@pytest.fixture
def evil_peer(
    bootstrap_node: BootstrapProcess, signed_archive: SignedArchive, tmp_path: Path
) -> Iterator[EvilFactory]:
    """Start lying peers that announce dt-big and SMALL (or `names`); stopped at teardown."""
    peers: list[EvilPeer] = []

    def start(lie: Lie, *, piece: int | None = 0, names: tuple[str, ...] = ()) -> EvilPeer:
        names = names or (signed_archive.big_package, SMALL)
        peer = EvilPeer(
            files_of(signed_archive, *names),
            bootstrap=bootstrap_node.dht,
            state_dir=tmp_path / f"evil-{len(peers) + 1}",
            lie=lie,
            piece=piece,
        )
        peers.append(peer)
        return peer.start()

    yield start
    for peer in reversed(peers):
        peer.stop()


def _download(apt: AptClient, name: str, directory: Path, archive: SignedArchive) -> None:
    """`apt-get download name` must succeed with the file of the signed index."""
    apt.download([name], directory).check()
    package = archive.package(name)
    data = (directory / package.download_name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == package.sha256, name


def _log_bans(daemon: DaemonProcess, peer: EvilPeer) -> bool:
    """The daemon's log says it banned `peer` (download.py: "...; banned")."""
    return any(
        peer.url in line and line.endswith("banned")
        for line in daemon.log_file.read_text(errors="replace").splitlines()
    )


def _store_names(daemon: DaemonProcess) -> set[str]:
    """SHA256 names of the files in the daemon's content store."""
    return {path.name for path in (daemon.state_dir / "store").glob("??/*")}


def _verify_failures(daemon: DaemonProcess) -> int:
    return int(daemon.status()["verify_failures"]["peer"])


@dataclass(frozen=True)
class LoneLiar:
    """A liar that is the only peer announcing the files, and what B must make of it."""

    lie: Lie
    piece: int | None = 0
    lies: int = 0  # verify_failures.peer after dt-big
    banned: bool = True
    honest_pieces: int = 0  # pieces 1..honest_pieces come from the liar; the rest bound the mirror
    peer_timeout: float | None = None


LONE_LIARS = [
    pytest.param(LoneLiar(Lie.CORRUPT, LIE_AT, lies=1, honest_pieces=LIE_AT - 1), id="corrupt"),
    pytest.param(LoneLiar(Lie.CORRUPT, None, lies=1), id="corrupt-every-piece"),
    # B audits a lone peer's list: a random 16 KiB block of a piece it received, compared with
    # the mirror. A list forged on every piece is caught whichever block is drawn. (A liar that
    # alters a few bytes of one piece usually slips past the audit; the whole-file hash then
    # aborts apt's download once and bans it: docs/swarm.md, trust rule 5.)
    pytest.param(LoneLiar(Lie.FORGED_LIST, None, lies=1), id="forged-list"),
    # Another file's bytes under an honest list: the first piece fails its corroborated entry.
    pytest.param(LoneLiar(Lie.OTHER_FILE, None, lies=1), id="other-files-bytes"),
    # A 64 KiB header line: malformed (the client's header limit), banned as misbehaving.
    pytest.param(LoneLiar(Lie.HUGE_HEADERS), id="huge-headers"),
    # A slowloris (4 KiB every 50 ms, never silent for the peer timeout): not a violation,
    # so not banned; its pieces go overdue and the mirror takes them (web seed).
    pytest.param(LoneLiar(Lie.DRIP, banned=False), id="slowloris"),
    pytest.param(LoneLiar(Lie.WRONG_SIZE_LIST), id="wrong-size-in-list"),
    pytest.param(LoneLiar(Lie.WRONG_SIZE_BODY), id="wrong-size-body"),
    pytest.param(LoneLiar(Lie.TRUNCATED), id="truncated"),
    pytest.param(LoneLiar(Lie.ENDLESS), id="endless"),
    pytest.param(LoneLiar(Lie.STALL, peer_timeout=1.0), id="stall"),
    pytest.param(LoneLiar(Lie.NOTHING, peer_timeout=1.0), id="nothing"),
    # Refused connections are not a protocol violation (PeerUnavailable): set aside, not banned.
    pytest.param(LoneLiar(Lie.REFUSE, banned=False), id="refuse"),
]


@pytest.mark.parametrize("case", LONE_LIARS)
def test_lone_liar_is_banned_and_apt_gets_the_right_files(
    case: LoneLiar,
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    swarm_node: SwarmNode,
    evil_peer: EvilFactory,
    tmp_path: Path,
) -> None:
    big, small = signed_archive.big, signed_archive.package(SMALL)
    evil = evil_peer(case.lie, piece=case.piece)
    timeout = () if case.peer_timeout is None else ("--peer-timeout", str(case.peer_timeout))
    b = swarm_node(*timeout)
    apt = apt_client(signed_archive, mirror, mode=ProxyMode.URL_PREFIX, proxy=b.proxy)
    apt.update().check()
    for package in (big, small):
        wait_until_found(b, [], package.sha256, urls=(evil.url,))
    mirror.reset_counters()

    _download(apt, big.name, tmp_path / "b", signed_archive)
    status = b.status()
    assert status["verify_failures"]["peer"] == case.lies, status
    bans = status["bans"]
    assert bans["lied"] == case.lies, status
    assert (bans["lied"] + bans["misbehaved"] > 0) == case.banned, status
    # The known peers list it, banned or not, and why (the dashboard's and `dhtdeb status`).
    liar = next(p for p in status["peers"] if f"http://{p['address']}" == evil.url)
    assert liar["banned"] is case.banned, liar
    if case.banned:
        assert liar["ban_reason"].startswith("lied: " if case.lies else "misbehaved: "), liar
    # A peer's lie is never blamed on the mirror.
    assert status["verify_failures"]["mirror"] == 0, status
    mirror_big = mirror.bytes_sent(big.filename)
    bound = AUDIT_BLOCK + (
        big.size - (case.honest_pieces + 1 - INFLIGHT) * PIECE if case.honest_pieces else big.size
    )
    assert mirror_big <= bound, (mirror_big, bound, mirror.bytes_by_path())
    if case.honest_pieces:
        assert status["bytes"]["from_peers"] >= case.honest_pieces * PIECE, status
    if case.lie is not Lie.REFUSE:
        assert evil.request_count(big.sha256) >= 1, "B never asked the liar"

    asked = evil.request_count()
    _download(apt, small.name, tmp_path / "b", signed_archive)
    if case.banned:
        assert evil.request_count() == asked, f"asked again after dt-big: {evil.requests[asked:]}"
    assert mirror.bytes_sent(small.filename) == small.size
    assert _verify_failures(b) == case.lies
    assert _log_bans(b, evil) == case.banned, b.log_tail()


def test_honest_peer_whose_piece_list_arrives_in_two_segments_is_used(
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    swarm_node: SwarmNode,
    evil_peer: EvilFactory,
    tmp_path: Path,
) -> None:
    """TCP keeps no message boundaries: a piece list may arrive in several reads. The peer is
    honest, so B takes the file from it as from any honest peer (test_swarm.py: the mirror sends
    one piece, to check the list)."""
    big = signed_archive.big
    honest = evil_peer(Lie.SPLIT_LIST, names=(big.name,))
    b = swarm_node()
    apt = apt_client(signed_archive, mirror, mode=ProxyMode.URL_PREFIX, proxy=b.proxy)
    apt.update().check()
    wait_until_found(b, [], big.sha256, urls=(honest.url,))
    mirror.reset_counters()

    _download(apt, big.name, tmp_path / "b", signed_archive)
    assert not _log_bans(b, honest), b.log_tail()
    assert mirror.bytes_sent(big.filename) <= AUDIT_BLOCK, mirror.bytes_by_path()
    assert b.status()["bytes"]["from_peers"] == big.size


@pytest.mark.parametrize(
    ("lie", "bound_pieces"),
    [
        # Every offered piece forged: a sampled block convicts it; then the mirror sends the
        # liar's pieces once (the file once in all, plus the sampled blocks).
        pytest.param(Lie.OFFERED_FORGERY, 0, id="offered-forgery"),
        # 16 bytes of one piece: samples miss it, whole pieces are checked (each at most once)
        # until the lie is found, then the liar's pieces come again.
        pytest.param(Lie.OFFERED_FLIP, 21, id="offered-flip"),
    ],
)
def test_a_downloader_whose_offers_lie_is_convicted_and_apt_never_fails(
    lie: Lie,
    bound_pieces: int,
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    swarm_node: SwarmNode,
    evil_peer: EvilFactory,
    tmp_path: Path,
) -> None:
    """A peer that poses as a downloader offers pieces it "got from its mirror" with forged
    bytes: B takes them on its word, and the whole-file hash fails. B's inquiry asks the
    mirror which offer was wrong, bans the liar, retracts its pieces and fetches them again;
    apt's one request never fails (B never let apt read a piece taken on an offer)."""
    big = signed_archive.big
    evil = evil_peer(lie, piece=LIE_AT, names=(signed_archive.big_package,))
    b = swarm_node()
    apt = apt_client(signed_archive, mirror, mode=ProxyMode.URL_PREFIX, proxy=b.proxy)
    apt.update().check()
    wait_until_found(b, [], big.sha256, urls=(evil.url,))
    mirror.reset_counters()

    _download(apt, big.name, tmp_path / "b", signed_archive)
    status = b.status()
    log = b.log_file.read_text(errors="replace")
    assert "the mirror checks the pieces taken on offers" in log, b.log_tail()
    assert "swarm assembled a bad file" not in log, b.log_tail()  # no failed response
    assert status["bytes"]["from_peers"] >= PIECE, status  # the liar's pieces were taken
    assert status["verify_failures"]["peer"] == 1, status
    assert status["verify_failures"]["mirror"] == 0, status
    assert status["bans"] == {"lied": 1, "misbehaved": 0}, status
    inquiries = status["inquiries"]
    assert inquiries["opened"] >= 1 and inquiries["retracted_pieces"] >= 1, status
    assert 0 < inquiries["check_bytes"] <= 3 * AUDIT_BLOCK + bound_pieces * PIECE, status
    assert _log_bans(b, evil), b.log_tail()
    mirror_big = mirror.bytes_sent(big.filename)
    bound = big.size + 3 * AUDIT_BLOCK + bound_pieces * PIECE
    print(f"{lie.value}: mirror sent {mirror_big / big.size:.3f} x the file")
    assert mirror_big <= bound, (mirror_big, bound, mirror.bytes_by_path())
    assert len(mirror.requests_for(big.filename)) >= 2  # the stream and the checks


def test_liar_on_a_one_piece_file_is_banned_for_the_next_file(
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    swarm_node: SwarmNode,
    evil_peer: EvilFactory,
    tmp_path: Path,
) -> None:
    """A one-piece file has no list: its piece is checked against the signed SHA256 itself."""
    big, small = signed_archive.big, signed_archive.package(SMALL)
    evil = evil_peer(Lie.CORRUPT, piece=None)
    b = swarm_node()
    apt = apt_client(signed_archive, mirror, mode=ProxyMode.URL_PREFIX, proxy=b.proxy)
    apt.update().check()
    for package in (big, small):
        wait_until_found(b, [], package.sha256, urls=(evil.url,))
    mirror.reset_counters()

    _download(apt, small.name, tmp_path / "b", signed_archive)
    assert evil.count(f"/v1/files/{small.sha256}", 0) == 1
    assert _verify_failures(b) == 1
    assert mirror.bytes_sent(small.filename) == small.size
    assert _log_bans(b, evil), b.log_tail()

    asked = evil.request_count()
    _download(apt, big.name, tmp_path / "b", signed_archive)
    assert evil.request_count() == asked, evil.requests[asked:]
    assert mirror.bytes_sent(big.filename) == big.size
    assert _verify_failures(b) == 1


def test_consistent_list_liar_alone_costs_one_aborted_attempt(
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    swarm_node: SwarmNode,
    evil_peer: EvilFactory,
    tmp_path: Path,
) -> None:
    """Trust rule 5: a list lie that the audit misses (16 bytes altered in piece 5; the audit
    compares one 16 KiB block of the first piece received) is caught by the whole-file SHA256.
    apt's response is aborted, nothing is stored, the liar is banned, and apt's next attempt
    gets the file from the mirror without asking it."""
    big = signed_archive.big
    evil = evil_peer(Lie.BAD_LIST, piece=5)
    b = swarm_node()
    apt = apt_client(signed_archive, mirror, mode=ProxyMode.URL_PREFIX, proxy=b.proxy)
    apt.update().check()
    wait_until_found(b, [], big.sha256, urls=(evil.url,))
    mirror.reset_counters()

    failed = apt.download([big.name], tmp_path / "first")
    assert not failed.ok, failed.output
    assert _verify_failures(b) == 1
    assert big.sha256 not in _store_names(b)
    assert mirror.bytes_sent(big.filename) <= AUDIT_BLOCK  # the block that audited its list
    assert _log_bans(b, evil), b.log_tail()

    asked = evil.request_count()
    mirror.reset_counters()
    _download(apt, big.name, tmp_path / "second", signed_archive)
    assert evil.request_count() == asked, evil.requests[asked:]
    assert mirror.bytes_sent(big.filename) == big.size
    assert _verify_failures(b) == 1


@pytest.mark.parametrize(
    ("lie", "piece"),
    [
        pytest.param(Lie.CORRUPT, None, id="corrupt-every-piece"),
        pytest.param(Lie.BAD_LIST, 5, id="bad-list"),
    ],
)
def test_liar_beside_an_honest_peer_costs_at_most_one_mirror_piece(
    lie: Lie,
    piece: int | None,
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    swarm_node: SwarmNode,
    evil_peer: EvilFactory,
    tmp_path: Path,
) -> None:
    big, small = signed_archive.big, signed_archive.package(SMALL)
    a = swarm_node()
    apt_a = apt_client(signed_archive, mirror, mode=ProxyMode.URL_PREFIX, proxy=a.proxy)
    apt_a.update().check()
    for package in (big, small):
        _download(apt_a, package.name, tmp_path / "a", signed_archive)
    evil = evil_peer(lie, piece=piece)
    b = swarm_node()
    apt_b = apt_client(signed_archive, mirror, mode=ProxyMode.URL_PREFIX, proxy=b.proxy)
    apt_b.update().check()
    for package in (big, small):
        wait_until_found(b, [a], package.sha256, urls=(evil.url,))
    mirror.reset_counters()

    _download(apt_b, big.name, tmp_path / "b", signed_archive)
    assert _verify_failures(b) == 1
    assert evil.request_count(big.sha256) >= 1
    assert _log_bans(b, evil), b.log_tail()
    mirror_big = mirror.bytes_sent(big.filename)
    assert mirror_big <= PIECE, mirror.bytes_by_path()
    if piece is not None:
        # The lists disagree at `piece` only: the mirror referees exactly that piece.
        ranges = [dict(r.headers).get("Range") for r in mirror.requests_for(big.filename)]
        assert ranges == [f"bytes={piece * PIECE}-{(piece + 1) * PIECE - 1}"], ranges

    asked = evil.request_count()
    _download(apt_b, small.name, tmp_path / "b", signed_archive)
    assert evil.request_count() == asked, evil.requests[asked:]
    assert mirror.bytes_sent(small.filename) == 0  # from A
    assert _verify_failures(b) == 1


def test_peer_killed_mid_transfer_and_the_download_still_completes(
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    swarm_node: SwarmNode,
    tmp_path: Path,
) -> None:
    big = signed_archive.big
    # 4 MB/s: dt-big takes A about 5 s to upload, time enough to kill it half-way.
    a = swarm_node("--upload-rate", "4M")
    apt_a = apt_client(signed_archive, mirror, mode=ProxyMode.URL_PREFIX, proxy=a.proxy)
    apt_a.update().check()
    _download(apt_a, big.name, tmp_path / "a", signed_archive)
    b = swarm_node()
    apt_b = apt_client(signed_archive, mirror, mode=ProxyMode.URL_PREFIX, proxy=b.proxy)
    apt_b.update().check()
    wait_until_found(b, [a], big.sha256)
    mirror.reset_counters()

    running = apt_b.start(["download", big.name], cwd=tmp_path)
    wait_until(lambda: b.status()["bytes"]["from_peers"] > 0, what="B received peer bytes")
    a.kill()
    from_peers = b.status()["bytes"]["from_peers"]
    assert from_peers < big.size, "A finished before it could be killed"
    running.wait().check()
    data = (tmp_path / big.download_name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == big.sha256
    status = b.status()
    assert status["verify_failures"]["peer"] == 0, status  # dying is not lying
    assert status["requests"]["from_peers"] == 1, status
    # What A delivered is kept and the mirror sends the rest. Allowed on top: up to two pieces
    # B received from A but did not use (a copy that lost a web-seed race to the mirror's).
    mirror_big = mirror.bytes_sent(big.filename)
    assert mirror_big <= big.size - status["bytes"]["from_peers"] + 2 * PIECE, (mirror_big, status)
