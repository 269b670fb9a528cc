"""A node that found nobody for a run of files stops holding the mirror back for lookups."""

from dhtdeb.swarm.lookup_plan import ALONE_AFTER, LoneStreak


def test_a_run_of_empty_lookups_makes_a_node_alone_and_one_sighting_ends_it() -> None:
    streak = LoneStreak()
    for _ in range(ALONE_AFTER - 1):
        streak.report(found_someone=False)
    assert not streak.alone  # a few misses: lookups still come first
    streak.report(found_someone=False)
    assert streak.alone
    streak.report(found_someone=True)  # a holder, a fetching peer, a DHT peer
    assert not streak.alone and streak.count == 0
