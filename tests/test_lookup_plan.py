"""The drivers' policy for lookups and the mirror's wait (swarm/lookup_plan.py)."""

from __future__ import annotations

from dhtdeb.swarm.lookup_plan import (
    ALONE_AFTER,
    EARLY_LOOKUPS,
    ENOUGH_PEERS,
    LOOKUP_DEADLINE,
    LOOKUP_INTERVAL,
    LOOKUP_INTERVAL_MAX,
    MIRROR_RACE,
    MIRROR_WAIT,
    RACE_SAMPLES_MIN,
    LookupPlan,
    MirrorRace,
)


def first_lookups(race: MirrorRace, outcomes: list[tuple[bool, float]], now: float = 0.0) -> None:
    """Downloads of one-piece files whose first lookups found a holder after `seconds` (or
    ended empty-handed after them)."""
    for found, seconds in outcomes:
        plan = LookupPlan(1, race)
        race_before = plan.mirror_wait(now)
        assert race_before is not None
        if found:
            plan.peers_found(now + seconds)
            plan.dht_lookup_ended(now + LOOKUP_DEADLINE)
        else:
            plan.dht_lookup_ended(now + seconds)
        plan.first_lookup_ended(found)
        now += 1.0


def test_a_new_node_gives_its_first_lookups_their_time() -> None:
    assert LookupPlan(1, MirrorRace()).mirror_wait(0.0) == MIRROR_WAIT
    assert MIRROR_WAIT < LOOKUP_DEADLINE  # a lookup may find holders after the mirror started


def test_a_file_of_several_pieces_waits_for_its_lookup() -> None:
    race = MirrorRace()
    first_lookups(race, [(True, 0.15)] * 10)
    plan = LookupPlan(5, race)
    assert plan.mirror_wait(0.0) == MIRROR_WAIT  # or less: the wait ends with the lookup
    assert not plan.peers_found(0.1)  # a crowd must find each other: the lookup's end


def test_the_race_follows_the_time_lookups_take_to_find_a_holder() -> None:
    """On the internet a holder comes after a few round trips: the mirror waits that long."""
    race = MirrorRace()
    first_lookups(race, [(True, 0.1)] * (RACE_SAMPLES_MIN - 1))
    assert race.wait() == MIRROR_WAIT  # too few to go by
    first_lookups(race, [(True, 0.1)])
    assert abs(race.wait() - 0.15) < 1e-9
    first_lookups(race, [(True, 0.004)] * 32)  # a LAN: the floor
    assert race.wait() == MIRROR_RACE
    first_lookups(race, [(True, 1.0)] * 32)  # never past the longest wait
    assert race.wait() == MIRROR_WAIT


def test_lookups_that_mostly_find_nobody_keep_the_race_short() -> None:
    race = MirrorRace()
    misses = [(False, 0.3)] * (ALONE_AFTER - 2)  # not enough in a row to be alone
    first_lookups(
        race, [(True, 0.2), *misses] * 4 + [(True, 0.2), (False, 0.3), (False, 0.3), (False, 0.3)]
    )
    assert not race.streak.alone
    assert race.wait() == MIRROR_RACE  # 5 of the last 32 found someone


def test_alone_the_mirror_does_not_wait_and_the_first_find_ends_that() -> None:
    race = MirrorRace()
    first_lookups(race, [(False, 0.3)] * ALONE_AFTER)
    plan = LookupPlan(1, race)
    assert plan.alone() and plan.mirror_wait(0.0) == 0.0
    assert not LookupPlan(3, race).alone()  # a crowd's file still waits for its lookup
    first_lookups(race, [(True, 0.05)])
    assert not LookupPlan(1, race).alone()


def test_a_lookup_that_runs_past_its_download_still_counts_once() -> None:
    race = MirrorRace()
    plan = LookupPlan(1, race)
    plan.mirror_wait(10.0)
    assert plan.peers_found(10.12)  # a one-piece file: the mirror waits no longer
    plan.peers_found(10.2)  # a later batch of the same lookup
    plan.first_lookup_ended(True)
    plan.first_lookup_ended(True)  # reported once
    plan.dht_lookup_ended(10.3)
    assert race.streak.count == 0
    first_lookups(race, [(True, 0.12)] * (RACE_SAMPLES_MIN - 1))
    assert abs(race.wait() - 1.5 * 0.12) < 1e-9


def test_later_lookups_come_early_in_a_crowd_and_slowly_beside_holders() -> None:
    plan = LookupPlan(4, MirrorRace())
    pauses = plan.later_lookups()
    assert [next(pauses) for _ in range(len(EARLY_LOOKUPS) + 2)] == [
        *EARLY_LOOKUPS,
        LOOKUP_INTERVAL,
        LOOKUP_INTERVAL,
    ]
    plan.hinted()
    assert next(plan.later_lookups()) == LOOKUP_INTERVAL
    assert next(LookupPlan(1, MirrorRace()).later_lookups()) == LOOKUP_INTERVAL  # no crowd split


def test_later_lookups_slow_down_while_they_find_nobody_new() -> None:
    plan = LookupPlan(4, MirrorRace())
    pauses = plan.later_lookups()
    early = [next(pauses) for _ in EARLY_LOOKUPS]
    plan.later_lookup_ended(False, False)  # nobody known yet: the crowd has not announced
    plan.later_lookup_ended(True, True)  # the crowd is finding each other
    plan.later_lookup_ended(True, True)
    assert len(early) == 3
    assert next(pauses) == LOOKUP_INTERVAL
    seen = []
    for _ in range(5):
        plan.later_lookup_ended(False, True)
        seen.append(next(pauses))
    assert seen == [
        2 * LOOKUP_INTERVAL,
        4 * LOOKUP_INTERVAL,
        8 * LOOKUP_INTERVAL,
        LOOKUP_INTERVAL_MAX,
        LOOKUP_INTERVAL_MAX,
    ]
    assert 8 * LOOKUP_INTERVAL == LOOKUP_INTERVAL_MAX
    plan.later_lookup_ended(True, True)  # someone new joined: look often again
    assert next(pauses) == LOOKUP_INTERVAL


def test_a_download_that_knows_nobody_keeps_looking_every_interval() -> None:
    plan = LookupPlan(4, MirrorRace())
    pauses = plan.later_lookups()
    for _ in range(len(EARLY_LOOKUPS) + 3):
        next(pauses)
        plan.later_lookup_ended(False, False)
    assert next(pauses) == LOOKUP_INTERVAL


def test_later_lookups_stop_once_enough_holders_answered() -> None:
    plan = LookupPlan(40, MirrorRace())
    for peer in range(ENOUGH_PEERS - 1):
        plan.list_answered(peer, None, False)
        plan.list_answered(peer, None, False)  # a peer counts once
    assert plan.wants_more_peers()
    plan.list_answered("last", None, False)
    assert not plan.wants_more_peers()


def test_a_flash_crowd_keeps_looking_for_each_other() -> None:
    """Twenty machines fetch one new file at once: nobody holds it whole, and every peer
    answers with its offers (or the part it has of a corroborated list). However many answer,
    the later lookups go on: the crowd must keep finding each other for its mirror streams to
    split the pieces (bench/swarm.py's crowd: 1.6-1.8x the file from the mirror when they
    stopped at eight answers, 1.1x with this)."""
    plan = LookupPlan(64, MirrorRace())
    for peer in range(20):
        plan.list_answered(f"offers {peer}", frozenset({peer}), True)
        plan.list_answered(f"corroborated {peer}", frozenset({peer, peer + 1}), False)
    assert plan.wants_more_peers()
