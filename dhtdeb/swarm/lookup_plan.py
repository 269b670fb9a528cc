"""When a download looks for peers, and how long the mirror waits for them: the drivers' policy.

Owns: the lookup cadence of one download (the first lookup, a few early repeats, then one every
`LOOKUP_INTERVAL`), how long the mirror waits for the first lookup, the node-wide memory that
sets that wait (`MirrorRace`, with the `LoneStreak` of downloads that found nobody); the growth of
the mirror's request windows is the core's (swarm/mirror_plan.py). Trusts: what the driver
reports, with the time it happened.

Sans-I/O: every method takes `now`; the daemon's driver (swarm/download.py) and the simulation's
(sim/download.py) both follow it, so the simulation measures the daemon's policy, not a copy.

The mirror's wait. A file of several pieces waits for its first lookup (`MIRROR_WAIT` at
most): a classroom's machines must find each other before they split the mirror's pieces. A
file of one piece (most of apt's) races: the mirror waits only as long as this node's recent
lookups took to find their first holder (all of `MIRROR_WAIT` until it knows), the floor
while few of them find anybody, and not at all while it is alone; the wait ends early when the
lookup ends or names a holder. On a LAN a holder comes within milliseconds and the floor,
`MIRROR_RACE`, applies; on the internet it comes after a few round trips (0.1-0.3 s), and a race
of 20 ms there sent nearly every small file to the mirror whatever the DHT held
(docs/simulation.md).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

# Seconds the mirror waits, at most, for a download's first lookup. Short: a lookup that has
# found nobody waits for late replies (one dead node in the path is enough), and every miss
# would pay that; peers found later still take over the pieces the mirror has not sent.
MIRROR_WAIT = 0.3
# Seconds a lookup may run. Longer than the mirror's wait: the mirror no longer waits for it, but
# a holder it finds late still serves the pieces the mirror has not sent, and the lookup that
# reaches the key's nodes on a slow path (a home uplink, a lost datagram) is not thrown away.
# In the 1,000-node simulation 2 % of first lookups found their holder only after 0.3 s.
LOOKUP_DEADLINE = 1.0
# The shortest race of the mirror for a one-piece file: a LAN lookup's time, with room. A lookup
# that comes back later costs apt nothing.
MIRROR_RACE = 0.02
RACE_HEADROOM = 1.5  # the race lasts this times the recent time to a first holder (its p80)
RACE_HISTORY = 32  # first lookups remembered
RACE_SAMPLES_MIN = 4  # found holders before the history sets the race
RACE_HIT_SHARE_MIN = 0.25  # below this share of first lookups finding someone, the floor applies
ALONE_AFTER = 8  # downloads in a row that found nobody before the mirror stops waiting (LoneStreak)
LOOKUP_INTERVAL = 2.0  # seconds between DHT lookups while the download runs (others may join)
# A later lookup that brings no peer the download did not know, while it knows some, doubles the
# pause before the next, up to this; one that does brings the pause back to LOOKUP_INTERVAL. A
# file's holders change slowly once its crowd has found each other: in the 300-node simulation
# the downloads of files of several pieces (14 % of them) made 5.3 later lookups each, 40 % of
# all lookups, most of them naming peers the download already had.
LOOKUP_INTERVAL_MAX = 16.0
# The first repeats come sooner: in a flash crowd every node's first lookup runs before the
# others have announced, and until they find each other they all stream piece 0 from the mirror.
EARLY_LOOKUPS = (0.25, 0.5, 1.0)  # pauses before the 2nd, 3rd and 4th lookup
# Holders of the whole file that have sent their piece list, after which the later lookups
# stop: more rarely help, and each lookup is a dozen datagrams to nodes that have their own
# work. Peers still downloading do not count (a crowd must keep finding each other).
ENOUGH_PEERS = 8


@dataclass
class LoneStreak:
    """How many downloads in a row found nobody at all: no hinted holder holding, fetching or
    starting the file, no peer in the DHT. After `ALONE_AFTER` of them this node is taken to be
    the first of its fleet to fetch this batch (or alone), and the mirror no longer waits for
    the lookups; the first download that finds someone ends the streak."""

    count: int = 0

    def report(self, found_someone: bool) -> None:
        self.count = 0 if found_someone else self.count + 1

    @property
    def alone(self) -> bool:
        return self.count >= ALONE_AFTER


@dataclass
class MirrorRace:
    """Node-wide: how long this node's first lookups took to find a holder, and so how long the
    mirror waits for the lookup of a one-piece file."""

    streak: LoneStreak = field(default_factory=LoneStreak)
    # (found a holder, seconds to the first one) of the last first lookups
    _recent: deque[tuple[bool, float]] = field(default_factory=lambda: deque(maxlen=RACE_HISTORY))

    def wait(self) -> float:
        """Seconds the mirror gives the first lookup of a one-piece file."""
        if self.streak.alone:
            return 0.0
        times = sorted(seconds for found, seconds in self._recent if found)
        if len(self._recent) < RACE_SAMPLES_MIN:
            return MIRROR_WAIT  # nothing known yet: the lookup gets its time
        if len(times) < RACE_SAMPLES_MIN or len(times) < RACE_HIT_SHARE_MIN * len(self._recent):
            return MIRROR_RACE
        p80 = times[min(len(times) - 1, (len(times) * 4) // 5)]
        return min(MIRROR_WAIT, max(MIRROR_RACE, RACE_HEADROOM * p80))

    def first_lookup(self, found: bool, seconds: float) -> None:
        """A download's first lookup: whether it found a holder, and after how long (the first
        one, not the lookup's end)."""
        self._recent.append((found, seconds))


class LookupPlan:
    """One download's lookups: when the mirror may stop waiting, and the pauses between them."""

    def __init__(self, pieces: int, race: MirrorRace) -> None:
        self._small = pieces == 1
        self._race = race
        self._hinted = False
        self._dht_started: float | None = None
        self._first_found: float | None = None
        self._first_ended = False
        self._answered: set[object] = set()
        self._interval = LOOKUP_INTERVAL

    def alone(self) -> bool:
        """A one-piece file while this node is alone: the mirror starts at once, and the
        holders asked before the DHT are not waited for."""
        return self._small and self._race.streak.alone

    def hinted(self) -> None:
        """The holders asked before the DHT named some: no DHT lookup first, and the later ones
        need no hurry."""
        self._hinted = True

    def mirror_wait(self, now: float) -> float:
        """The first DHT lookup starts: the seconds the mirror waits for it at most (0 while
        alone, the race for a one-piece file, `MIRROR_WAIT` for a file of several pieces); the
        wait also ends when the lookup does."""
        self._dht_started = now
        if not self._small:
            return MIRROR_WAIT
        return self._race.wait()

    def peers_found(self, now: float) -> bool:
        """Usable peers arrived from the DHT (the lookup may still be running). True when the
        mirror's wait is over: a one-piece file is asked of them at once, and if they fail, the
        mirror should not wait on for more."""
        if self._first_found is None:
            self._first_found = now
        return self._small

    def dht_lookup_ended(self, now: float) -> None:
        """The first DHT lookup returned: how long it took to find a holder, or that it found
        none, goes into the race's history. (The driver lets that lookup run to its end even
        when the mirror delivered the file first: otherwise only slow downloads would report.)"""
        if self._dht_started is None:
            return
        if self._first_found is not None:
            self._race.first_lookup(True, self._first_found - self._dht_started)
        else:
            self._race.first_lookup(False, now - self._dht_started)

    def first_lookup_ended(self, found: bool) -> None:
        """The first lookup returned (or was skipped for hinted holders); `found`: it, or the
        holders asked before it, found somebody."""
        if not self._first_ended:
            self._first_ended = True
            self._race.streak.report(found)

    def list_answered(self, peer: object, have: frozenset[int] | None, offers_only: bool) -> None:
        """A peer sent its piece list (`have` None: it holds every piece). Only a holder of the
        whole file counts towards enough, not a peer downloading the file too: a flash crowd's
        downloaders must go on finding each other, or their mirror streams stop splitting the
        file's pieces. (Counting every answer stopped the later lookups of bench/swarm.py's
        20-node crowd once 8 had answered: the mirror sent 1.6-1.8 times the file, not 1.1.)"""
        if have is None and not offers_only:
            self._answered.add(peer)

    def wants_more_peers(self) -> bool:
        """Whether the next later lookup is worth its datagrams: fewer than `ENOUGH_PEERS`
        holders of the whole file have answered."""
        return len(self._answered) < ENOUGH_PEERS

    def later_lookup_ended(self, new_peers: bool, knows_peers: bool) -> None:
        """A later lookup returned; `new_peers`: the download learnt of peers it did not know;
        `knows_peers`: it knows some peer at all. With peers known and none new, the pause
        before the next doubles (up to `LOOKUP_INTERVAL_MAX`). A download that knows nobody
        keeps looking every `LOOKUP_INTERVAL`: it may be the start of a crowd whose announces
        are still on their way (bench/swarm.py's crowd found each other only at its third or
        fourth lookup, a second in), or the file's first holder is yet to come."""
        if new_peers or not knows_peers:
            self._interval = LOOKUP_INTERVAL
        else:
            self._interval = min(2 * self._interval, LOOKUP_INTERVAL_MAX)

    def later_lookups(self) -> Iterator[float]:
        """The pauses before each later lookup. The early repeats are for a crowd that must
        find each other before its mirror streams split a file's pieces: not for a file of one
        piece, nor with holders at hand. Then `LOOKUP_INTERVAL`, longer while the lookups find
        nobody new beside peers known (`later_lookup_ended`)."""
        if not (self._hinted or self._small):
            yield from EARLY_LOOKUPS
        while True:
            yield self._interval
