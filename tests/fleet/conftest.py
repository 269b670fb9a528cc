"""Fixtures of the fleet harness (see tests/fleet/__init__.py).

- `fleet_archive` (session): a small Debian-shaped archive (60 packages, one over 10 MiB), built
  once per session with `archive_seed`.
- `make_fleet(hosts=…, …)`: a started `Fleet` in the test's tmp dir; every fleet is torn down at
  teardown, and a failing test's report carries the tail of each host's daemon log.
Fleet tests need root: without it they fail with `FleetNeedsRoot`, they never skip.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from .archive import ArchiveSpec, FleetArchive, build_archive
from .fleet import Fleet

MiB = 1024 * 1024
_fleets_key = pytest.StashKey[list[Fleet]]()


def selftest_spec(seed: int) -> ArchiveSpec:
    return ArchiveSpec(packages=60, seed=seed, max_size=16 * MiB, over_10mib=1)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.failed:
        for fleet in item.stash.get(_fleets_key, []):
            for host in fleet.hosts:
                if host.daemon is not None:
                    report.sections.append((f"daemon log {host.name}", host.log_tail()))
    return report


@pytest.fixture(scope="session")
def fleet_archive(tmp_path_factory: pytest.TempPathFactory, archive_seed: int) -> FleetArchive:
    return build_archive(tmp_path_factory.mktemp("fleet-archive"), selftest_spec(archive_seed))


class FleetFactory:
    def __init__(self, archive: FleetArchive, base: Path, fleets: list[Fleet]) -> None:
        self.archive = archive
        self.base = base
        self.fleets = fleets

    def __call__(self, **options: Any) -> Fleet:
        workdir = self.base / f"fleet-{len(self.fleets) + 1}"
        fleet = Fleet(options.pop("archive", self.archive), workdir, **options)
        self.fleets.append(fleet)
        return fleet.start()

    def close_all(self) -> list[str]:
        errors: list[str] = []
        for fleet in reversed(self.fleets):
            errors += fleet.close()
        return errors


@pytest.fixture
def make_fleet(
    request: pytest.FixtureRequest, tmp_path: Path, fleet_archive: FleetArchive
) -> Iterator[FleetFactory]:
    fleets: list[Fleet] = []
    request.node.stash[_fleets_key] = fleets
    factory = FleetFactory(fleet_archive, tmp_path, fleets)
    yield factory
    errors = factory.close_all()
    assert not errors, "fleet teardown left things behind:\n" + "\n".join(errors)
