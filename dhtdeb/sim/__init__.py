"""The network simulation (`dhtdeb sim scale`, docs/simulation.md).

dhtdeb's real DHT node code and real swarm scheduler, on a virtual-time event loop
(`loop.py`), over a simulated internet with latency, loss, NAT and a bandwidth model
(`network.py`), driven by a Debian-like workload (`workload.py`) through simulated machines
(`node.py`, `download.py`); `scale.py` runs a fleet, `report.py` counts and plots.
"""
