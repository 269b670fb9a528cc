"""`dhtdeb sim scale` on 200 machines: every file verified, the counters add up, one seed gives
one history.

The two runs are separate processes with different PYTHONHASHSEEDs, started together (one per
core): a result that depended on set or dict order of strings would differ between them. The
workload is small (a 600-package archive, 36 virtual seconds of arrivals) so that the real DHT
code of 200 nodes joins and serves it within the suite's budget; speed is not asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.sim_report import check_counters

from dhtdeb.sim.loop import Stalled, VirtualTimeLoop
from dhtdeb.sim.report import without_timings

NODES = 200
SEED = 3
COMMAND = [
    *("--nodes", str(NODES), "--seed", str(SEED), "--packages", "600", "--hours", "0.01"),
    *("--warmup", "60", "--drain", "60"),
]


def _start(out: Path, hash_seed: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.Popen(
        [sys.executable, "-m", "dhtdeb", "sim", "scale", *COMMAND, "--json", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("sim")
    outs = [tmp / "a.json", tmp / "b.json"]
    procs = [_start(outs[0], "1"), _start(outs[1], "2")]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"seed {SEED}: {err.decode()[-2000:]}"
    return [json.loads(out.read_text()) for out in outs]


def test_same_seed_same_numbers(runs: list[dict[str, Any]]) -> None:
    first, second = (without_timings(run) for run in runs)
    assert first == second, f"seed {SEED}: two runs differ"
    for run in runs:  # each process's own CPU time, at most its wall time
        cpu, wall = run["cpu_s"], run["wall_s"]
        assert 0 < cpu <= wall + 1, f"seed {SEED}: CPU {cpu} s, wall {wall} s"


def test_every_file_verified_and_counted(runs: list[dict[str, Any]]) -> None:
    r = runs[0]
    context = f"seed {SEED}: {r}"
    assert r["nodes"] == NODES and r["seed"] == SEED, context
    assert r["files_requested"] > NODES, context  # apt's batches: many files per machine
    assert r["batch_files_max"] >= 20, context
    check_counters(r, context)  # failed, wrong pieces, files, bytes, offload, ceilings
    assert r["files_finished"] > 0.9 * r["files_requested"], context
    assert r["lookups_with_holder"] > 0, context
    assert sum(r["lookup_histogram"]["counts"]) == r["lookups_with_holder"], context
    assert 0.0 < r["lookup_success"] <= 1.0, context
    assert 0.0 < r["lookup_p50_s"] <= r["lookup_p95_s"], context
    assert r["upkeep_bytes_per_s_per_node"] > 0.0, context
    # a download's time over the mirror alone's: a peer can beat the mirror's round trip, but
    # not by much, and the p95 is a slower download than the median
    assert 0.5 < r["download_stretch_p50"] <= r["download_stretch_p95"], context
    assert r["dht_datagrams"]["lookups_find_peers"] >= r["lookups_with_holder"], context


def test_virtual_loop_reports_a_deadlock() -> None:
    import asyncio

    async def wait_forever() -> None:
        await asyncio.get_running_loop().create_future()

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner, pytest.raises(Stalled):
        runner.run(wait_forever())


def test_virtual_loop_runs_timers_at_their_deadline() -> None:
    import asyncio

    async def sleeper() -> list[float]:
        loop = asyncio.get_running_loop()
        seen = []
        for delay in (3600.0, 1e-13, 0.0, 2.5):
            deadline = loop.time() + delay
            await asyncio.sleep(delay)
            assert loop.time() >= deadline
            seen.append(loop.time())
        return seen

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        seen = runner.run(sleeper())
    assert seen[0] == pytest.approx(3600.0) and seen[-1] == pytest.approx(3602.5)
