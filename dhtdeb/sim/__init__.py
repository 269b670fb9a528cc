"""The network simulation (`dhtdeb sim scale`, `sim sweep`, `sim plot`; docs/simulation.md).

dhtdeb's real DHT node code and real swarm scheduler, on a virtual-time event loop
(`loop.py`), over a simulated internet with latency, loss, NAT and a bandwidth model
(`network.py`), driven by a Debian-like workload (`workload.py`) through simulated machines
(`node.py`, `download.py`, with the daemon's own lookup policy from swarm/lookup_plan.py);
`scale.py` runs a fleet, `report.py` counts, `sweep.py` runs one parameter's values, `plots.py`
draws.
"""
