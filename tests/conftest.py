"""Fixtures of the real-parts harness (see tests/support/). Generic: no dhtdeb logic here.

- `signed_archive` (session): the standard signed archive, built once with `archive_seed`.
- `archive_copy`: a private copy of it for tests that mutate or attack the archive.
- `serve_archive(root)`: a started `Mirror` for any directory;
  `mirror`: one serving `signed_archive`.
- `apt_client(archive, mirror, mode=…, proxy=…)`: an isolated real apt-get.
- `dhtdeb_daemon(...)`: a started `dhtdeb serve` subprocess trusting the archive key.
A failing test's report shows the archive seed and the tail of each daemon log.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from support.apt import AptClientFactory
from support.archive import DEFAULT_SEED, SignedArchive, build_archive, stop_key_agent
from support.daemon import DaemonFactory
from support.mirror import Mirror, MirrorFactory

_daemons_key = pytest.StashKey[DaemonFactory]()


def _seed() -> int:
    return int(os.environ.get("DHTDEB_TEST_SEED", DEFAULT_SEED))


def pytest_report_header() -> str:
    return f"dhtdeb test archive seed: {_seed()} (set DHTDEB_TEST_SEED to change)"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.failed:
        if "signed_archive" in getattr(item, "fixturenames", ()):
            report.sections.append(("archive seed", f"DHTDEB_TEST_SEED={_seed()}"))
        factory = item.stash.get(_daemons_key, None)
        for daemon in factory.daemons if factory else ():
            report.sections.append((f"daemon log {daemon.state_dir}", daemon.log_tail()))
    return report


@pytest.fixture(scope="session")
def archive_seed() -> int:
    return _seed()


@pytest.fixture(scope="session")
def signed_archive(
    tmp_path_factory: pytest.TempPathFactory, archive_seed: int
) -> Iterator[SignedArchive]:
    archive = build_archive(tmp_path_factory.mktemp("signed-archive"), seed=archive_seed)
    yield archive
    stop_key_agent(archive.key)
    stop_key_agent(archive.unknown_key)


@pytest.fixture
def archive_copy(signed_archive: SignedArchive, tmp_path: Path) -> SignedArchive:
    return signed_archive.copy_to(tmp_path / "archive")


@pytest.fixture
def serve_archive() -> Iterator[MirrorFactory]:
    factory = MirrorFactory()
    yield factory
    factory.stop_all()


@pytest.fixture
def mirror(serve_archive: MirrorFactory, signed_archive: SignedArchive) -> Mirror:
    return serve_archive(signed_archive.root)


@pytest.fixture
def apt_client(tmp_path: Path) -> AptClientFactory:
    return AptClientFactory(tmp_path / "apt")


@pytest.fixture
def dhtdeb_daemon(
    request: pytest.FixtureRequest, tmp_path: Path, signed_archive: SignedArchive
) -> Iterator[DaemonFactory]:
    factory = DaemonFactory(tmp_path / "daemons", [signed_archive.keyring])
    request.node.stash[_daemons_key] = factory
    yield factory
    factory.stop_all()
