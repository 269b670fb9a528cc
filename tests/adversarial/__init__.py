"""The adversarial and fault suite (issue 13): lying peers, a lying mirror, the DHT under attack,
hostile clients on the proxy and peer ports, and faults (kills, full disks, broken indexes, a
mirror that goes away, a clock that jumps). Each case states its expected outcome in its
docstring and checks the daemon's counters; docs/security.md lists every case with its test.
"""
