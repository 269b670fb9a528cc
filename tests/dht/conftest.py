"""Fixtures for DHT tests: seeded randomness (the seed is printed on failure) and node swarms."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from .swarm import Swarm


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> Iterator[int]:
    value = int(os.environ.get("DHT_TEST_SEED", random.SystemRandom().randrange(2**32)))
    yield value
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"\n*** {request.node.nodeid} failed with DHT_TEST_SEED={value}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


@pytest.fixture
async def swarm(tmp_path: Path, seed: int) -> AsyncIterator[Swarm]:
    group = Swarm(tmp_path, random.Random(seed))
    try:
        yield group
    finally:
        await group.close()
