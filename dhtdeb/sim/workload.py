"""What the simulated fleet asks for, and when: a Debian-like archive and each machine's plan.

Owns: package sizes, popularity, the daily updates, and per machine its NAT, link speeds, sessions
and the batch of files its upgrade fetches. Trusts: its seeded `random.Random` only; the plan is
drawn whole before the simulation starts, so the workload never depends on what the network does.

- Sizes follow bookworm main amd64 (63,440 packages, docs/shared DESIGN notes): 25 % under 18 KB,
  median 59 KB, 80 % under 455 KB, 95 % under 3.9 MB, 99 % under 22 MB; log-linear between those
  quantiles.
- Popularity is Zipf-like: the package of rank r is installed on a machine with probability
  min(1, (r0 / r) ** a), so a machine holds ~900 packages and most packages are on under 1 % of
  machines (popcon). Rank and size are drawn independently.
- Every day `update_share` of the archive gets a new version. A machine that last upgraded d days
  ago fetches the newest version of each installed package updated in those d days, in one batch
  (apt-get upgrade): most machines are a day behind (a dozen files), some a week, a few a month
  (hundreds of files).
- Sessions: half the machines are online when the update appears and upgrade within the hour
  (apt-daily-upgrade's random delay); the others come online during the window and upgrade on
  arrival. Session lengths are log-normal with a median of 5 h: half the machines stay over 5 h.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from dataclasses import dataclass, field

KB = 1000
# (quantile, bytes) of Debian's .deb sizes; the ends are guesses (smallest and largest .debs).
SIZE_QUANTILES = (
    (0.0, 1_000),
    (0.25, 18 * KB),
    (0.50, 59 * KB),
    (0.80, 455 * KB),
    (0.95, 3_900 * KB),
    (0.99, 22_000 * KB),
    (0.999, 150_000 * KB),
    (1.0, 500_000 * KB),
)
# Days behind of a machine that comes online during the window: (share, first day, last day).
DAYS_BEHIND = ((0.6, 1, 1), (0.3, 2, 7), (0.1, 8, 30))


def debian_size(u: float) -> int:
    """The size at quantile `u` (0..1) of Debian's package sizes."""
    qs = [q for q, _ in SIZE_QUANTILES]
    i = min(len(qs) - 1, max(1, bisect.bisect_right(qs, u)))
    (q0, s0), (q1, s1) = SIZE_QUANTILES[i - 1], SIZE_QUANTILES[i]
    t = (u - q0) / (q1 - q0)
    return round(math.exp(math.log(s0) + t * (math.log(s1) - math.log(s0))))


@dataclass(frozen=True, slots=True)
class DebFile:
    package: int
    day: int  # the update that brought this version: 0 today, k days ago
    size: int
    sha256: str


@dataclass(frozen=True)
class WorkloadParams:
    packages: int = 60_000
    update_share: float = 0.015
    popular_rank: float = 250.0  # r0: the packages every machine has
    popularity_exponent: float = 1.3  # a
    nat_share: float = 0.5
    hours: float = 2.0
    session_median_h: float = 5.0
    session_sigma: float = 1.0
    offline_median_h: float = 8.0
    online_at_start: float = 0.5
    down_median: float = 6.25e6  # bytes/s (50 Mbit/s)
    up_share: tuple[float, float] = (0.1, 0.5)  # of the down rate


@dataclass
class MachinePlan:
    index: int
    nat: bool
    down: float
    up: float
    x: float
    y: float
    access: float
    sessions: list[tuple[float, float]]  # (online at, offline at), virtual seconds
    upgrade_at: float
    days_behind: int
    batch: list[DebFile] = field(default_factory=list)


class Archive:
    """The packages, their sizes and popularity, and the last 30 days of updates."""

    def __init__(self, params: WorkloadParams, rng: random.Random, seed: int) -> None:
        self.params = params
        n = params.packages
        self.sizes = [debian_size(rng.random()) for _ in range(n)]
        ranks = list(range(1, n + 1))
        rng.shuffle(ranks)
        self.rank = ranks
        days = max(high for _, _, high in DAYS_BEHIND)
        per_day = round(n * params.update_share)
        self.updated = [sorted(rng.sample(range(n), per_day)) for _ in range(days)]
        # The newest update of each package within the window of days: package -> day.
        self.newest: dict[int, int] = {}
        for day in range(days - 1, -1, -1):
            for package in self.updated[day]:
                self.newest[package] = day
        self._seed = seed

    def installed_share(self, package: int) -> float:
        params = self.params
        share: float = (params.popular_rank / self.rank[package]) ** params.popularity_exponent
        return min(1.0, share)

    def file(self, package: int) -> DebFile:
        day = self.newest[package]
        tag = f"{self._seed} {package} {day}".encode()
        return DebFile(package, day, self.sizes[package], hashlib.sha256(tag).hexdigest())


def _days_behind(rng: random.Random) -> int:
    u = rng.random()
    for share, low, high in DAYS_BEHIND:
        if u < share:
            return rng.randint(low, high)
        u -= share
    return 1


def plan_fleet(params: WorkloadParams, count: int, seed: int) -> tuple[Archive, list[MachinePlan]]:
    """The archive and every machine's plan, drawn from `seed` alone."""
    rng = random.Random(seed)
    archive = Archive(params, random.Random(rng.getrandbits(64)), seed)
    window = params.hours * 3600.0
    plans: list[MachinePlan] = []
    for index in range(count):
        down = params.down_median * math.exp(rng.gauss(0.0, 0.8))
        up = down * rng.uniform(*params.up_share)
        session = 3600.0 * params.session_median_h * math.exp(rng.gauss(0.0, params.session_sigma))
        if rng.random() < params.online_at_start:
            start, days, upgrade = 0.0, 1, rng.uniform(0.0, min(3600.0, window))
            session *= rng.random()  # the part of its session still to come
        else:
            start, days = rng.uniform(0.0, window), _days_behind(rng)
            upgrade = start + rng.uniform(30.0, 600.0)
        sessions = []
        while start < window:
            sessions.append((start, start + max(600.0, session)))
            off = 3600.0 * params.offline_median_h * math.exp(rng.gauss(0.0, 1.0))
            start = start + session + off
            session = 3600.0 * params.session_median_h * math.exp(rng.gauss(0.0, 1.0))
        plans.append(
            MachinePlan(
                index,
                nat=rng.random() < params.nat_share,
                down=down,
                up=up,
                x=rng.random(),
                y=rng.random(),
                access=rng.uniform(0.002, 0.03),
                sessions=sessions,
                upgrade_at=upgrade,
                days_behind=days,
            )
        )
    _draw_batches(archive, plans, random.Random(rng.getrandbits(64)))
    return archive, plans


def _draw_batches(archive: Archive, plans: list[MachinePlan], rng: random.Random) -> None:
    """Who has each recently updated package installed: geometric skips over the machines, so
    the cost is the number of installs, not machines times packages."""
    count = len(plans)
    for package in sorted(archive.newest):
        share = archive.installed_share(package)
        day = archive.newest[package]
        debfile = archive.file(package)
        i = -1
        while True:
            if share >= 1.0:
                i += 1
            else:
                u = 1.0 - rng.random()
                i += 1 + int(math.log(u) / math.log(1.0 - share))
            if i >= count:
                break
            if plans[i].days_behind > day:
                plans[i].batch.append(debfile)
    for plan in plans:
        # apt fetches in its own order (alphabetical by package); any fixed order will do
        plan.batch.sort(key=lambda f: f.sha256)
