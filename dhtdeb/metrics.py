"""Prometheus exposition (`/metrics`) of the numbers /status.json shows.

Owns: the metric families, their names, types, labels and help texts (`FAMILIES`, and the lookup
histogram). Trusts: the status dict app.py builds (its groups and keys, see `status()` there) and
the DHT's lookup histograms; every value is read from them at scrape time, so /metrics and
/status.json never disagree about a counter.

Names follow Prometheus' conventions: every family starts with `dhtdeb_`, counters end in
`_total`, byte counts in `_bytes`, durations in `_seconds`; a label splits a family only where
the sum over it means something (bytes received = from peers + from the mirror). The families
and what they count are listed in docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from dhtdeb.stats import LOOKUP_PURPOSES, Histogram

StatusProvider = Callable[[], dict[str, object]]
LookupHistograms = Callable[[], Mapping[str, Histogram]]

# Groups of /status.json whose keys appear only once counted (the DHT's datagram counters): a
# missing key there is a zero, anywhere else a bug.
_SPARSE_GROUPS = frozenset({"dht_datagrams"})
# dht/wire.py's METHODS (not imported: with --no-dht the kademlia package is never loaded)
_DHT_METHODS = ("ping", "find_node", "get_peers", "announce_peer", "dial_back", "dial")


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family read from one group of /status.json.

    `series` maps a label value to the key it is read from (`label` names the label), or is a
    single key for a family without labels. `name` is without `_total`: prometheus-client adds
    it to counters."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    group: str
    series: str | Mapping[str, str]
    label: str = ""

    @property
    def exposed_name(self) -> str:
        return f"{self.name}_total" if self.kind == "counter" else self.name

    def keys(self) -> list[tuple[tuple[str, ...], str]]:
        """(label values, status key) of every series."""
        if isinstance(self.series, str):
            return [((), self.series)]
        return [((value,), key) for value, key in self.series.items()]


def _same(*keys: str) -> dict[str, str]:
    return {key: key for key in keys}


FAMILIES: tuple[Family, ...] = (
    # -- bytes of archive files ------------------------------------------------------------------
    Family(
        "dhtdeb_received_bytes",
        "counter",
        "Bytes received for apt, by source: peers (verified pieces) or mirror (everything the "
        "mirror sent: files, pieces, Releases, passed-through files, inquiry checks).",
        "bytes",
        {"peers": "from_peers", "mirror": "from_mirror"},
        "source",
    ),
    Family(
        "dhtdeb_sent_bytes",
        "counter",
        "Bytes sent, by destination: apt (responses of the proxy) or peers (uploads: file "
        "bodies and piece lists).",
        "bytes",
        {"apt": "to_apt", "peers": "to_peers"},
        "destination",
    ),
    # -- apt's requests --------------------------------------------------------------------------
    Family(
        "dhtdeb_requests",
        "counter",
        "Proxy requests by outcome (kind): cache_hits (served from the store), from_peers and "
        "from_mirror (downloads that got bytes from there; a download may count in both), "
        "passed_through (unverifiable, forwarded), refused, read_ahead (downloads started for "
        "requests apt pipelined behind another), stale_releases (InRelease from the kept copy).",
        "requests",
        _same(
            "cache_hits",
            "from_peers",
            "from_mirror",
            "passed_through",
            "refused",
            "read_ahead",
            "stale_releases",
        ),
        "kind",
    ),
    # -- the store -------------------------------------------------------------------------------
    Family(
        "dhtdeb_cache_hits",
        "counter",
        "Requests for verified files answered from the store.",
        "requests",
        "cache_hits",
    ),
    Family(
        "dhtdeb_cache_misses",
        "counter",
        "Verified files the store lacked when asked for: downloads started (a request joining a "
        "running download of the same file is not counted again).",
        "downloads",
        "started",
    ),
    Family(
        "dhtdeb_cache_evictions",
        "counter",
        "Files evicted from the store (least recently used first) to stay under its limit.",
        "cache",
        "evictions",
    ),
    Family("dhtdeb_cache_files", "gauge", "Files in the store.", "cache", "files"),
    Family("dhtdeb_cache_bytes", "gauge", "Bytes of the files in the store.", "cache", "bytes"),
    Family(
        "dhtdeb_cache_limit_bytes",
        "gauge",
        "The store's size limit (--cache-limit); 0: no limit.",
        "cache",
        "limit_bytes",
    ),
    Family(
        "dhtdeb_cache_pinned_files",
        "gauge",
        "Files pinned in the store (never evicted).",
        "cache",
        "pinned",
    ),
    Family(
        "dhtdeb_cache_pinned_bytes",
        "gauge",
        "Bytes of the pinned files: part of dhtdeb_cache_bytes eviction cannot free.",
        "cache",
        "pinned_bytes",
    ),
    Family(
        "dhtdeb_cache_unsynced_files",
        "gauge",
        "Committed files waiting for their group fsync.",
        "cache",
        "unsynced",
    ),
    Family(
        "dhtdeb_cache_rechecked_files",
        "gauge",
        "Files removed at start after an unclean stop: their bytes no longer matched their name.",
        "cache",
        "rechecked_after_crash",
    ),
    Family(
        "dhtdeb_index_pool_files",
        "gauge",
        "Pool files known from verified Packages files.",
        "index",
        "pool_files",
    ),
    Family(
        "dhtdeb_index_files_learning",
        "gauge",
        "Verified index files whose pool files are being learned.",
        "index",
        "learning",
    ),
    # -- downloads -------------------------------------------------------------------------------
    Family(
        "dhtdeb_downloads_active",
        "gauge",
        "Downloads running (through the swarm or from the mirror).",
        "downloads",
        "active",
    ),
    Family(
        "dhtdeb_swarm_downloads_active",
        "gauge",
        "Of the downloads running, those through the swarm (peers and the mirror).",
        "downloads",
        "active_in_swarm",
    ),
    Family(
        "dhtdeb_downloads_failed",
        "counter",
        "Downloads that ended without a stored file (mirror refused or down, bad bytes, disk).",
        "downloads",
        "failed",
    ),
    # -- trust -----------------------------------------------------------------------------------
    Family(
        "dhtdeb_verification_failures",
        "counter",
        "Verification failures by kind: signature (InRelease/Release), index (an index file "
        "not matching the Release), peer (a piece or list proven false), mirror (a file from "
        "the mirror not matching its signed hash).",
        "verify_failures",
        _same("signature", "index", "peer", "mirror"),
        "kind",
    ),
    Family(
        "dhtdeb_peer_bans",
        "counter",
        "Peers banned, by kind: lied (a proven lie: an hour) or misbehaved (wrong size, stall, "
        "malformed: 10 minutes).",
        "bans",
        _same("lied", "misbehaved"),
        "kind",
    ),
    Family(
        "dhtdeb_inquiries",
        "counter",
        "Inquiries opened: whole-file mismatches of files with pieces taken on offers.",
        "inquiries",
        "opened",
    ),
    Family(
        "dhtdeb_inquiry_retracted_pieces",
        "counter",
        "Pieces taken on a convicted liar's word and fetched again.",
        "inquiries",
        "retracted_pieces",
    ),
    Family(
        "dhtdeb_inquiry_mirror_bytes",
        "counter",
        "Bytes asked of the mirror to find a liar (also in dhtdeb_received_bytes_total).",
        "inquiries",
        "check_bytes",
    ),
    # -- the peer server ---------------------------------------------------------------------------
    Family(
        "dhtdeb_peer_requests", "counter", "Requests to the peer server.", "peer_server", "requests"
    ),
    Family(
        "dhtdeb_peer_bad_requests",
        "counter",
        "Peer requests refused as malformed (bad HTTP, paths, hashes, methods).",
        "peer_server",
        "bad_requests",
    ),
    Family(
        "dhtdeb_peer_uploads",
        "counter",
        "Uploads to peers begun (a whole file or a range); their bytes are in "
        'dhtdeb_sent_bytes_total{destination="peers"}.',
        "peer_server",
        "uploads",
    ),
    Family(
        "dhtdeb_peer_uploads_refused",
        "counter",
        "Uploads refused with 503: as many running as allowed (--max-uploads).",
        "peer_server",
        "busy",
    ),
    Family(
        "dhtdeb_peer_uploads_stalled",
        "counter",
        "Uploads cut because the peer stopped reading.",
        "peer_server",
        "stalled",
    ),
    Family(
        "dhtdeb_peer_uploads_active", "gauge", "Uploads running.", "peer_server", "active_uploads"
    ),
    Family(
        "dhtdeb_peer_uploads_limit",
        "gauge",
        "Uploads allowed at once (--max-uploads).",
        "peer_server",
        "max_uploads",
    ),
    Family(
        "dhtdeb_peer_have_queries",
        "counter",
        "Have queries answered (which of these files do you hold?).",
        "peer_server",
        "have_queries",
    ),
    Family(
        "dhtdeb_peer_piece_lists_computed",
        "counter",
        "Stored files hashed to build a piece list a peer asked for.",
        "peer_server",
        "piece_lists_computed",
    ),
    # -- the DHT ---------------------------------------------------------------------------------
    Family("dhtdeb_dht_enabled", "gauge", "1 with the DHT on, 0 with --no-dht.", "dht", "enabled"),
    Family(
        "dhtdeb_dht_routing_table_nodes",
        "gauge",
        "Nodes in the DHT routing table (0 with --no-dht, or alone).",
        "dht",
        "routing_table",
    ),
    Family(
        "dhtdeb_dht_stored_keys",
        "gauge",
        "Keys (files) this node holds peer lists of, for others.",
        "dht",
        "stored_keys",
    ),
    Family(
        "dhtdeb_dht_announced_files",
        "gauge",
        "Files of this node whose last announce some node accepted.",
        "dht",
        "announced",
    ),
    Family(
        "dhtdeb_dht_unannounced_files",
        "gauge",
        "Files of this node queued for an announce, or whose last announce no node accepted.",
        "dht",
        "unannounced",
    ),
    Family(
        "dhtdeb_dht_announces",
        "counter",
        "Announces of this node's files, by result: accepted (by at least one node), "
        "unaccepted (by none), or withheld (this node looks unreachable).",
        "dht_datagrams",
        {
            "accepted": "announces_accepted",
            "unaccepted": "announces_unaccepted",
            "withheld": "announces_withheld",
        },
        "result",
    ),
    Family(
        "dhtdeb_dht_announces_direct",
        "counter",
        "Announces sent straight to the nodes of the file's last lookup, with their tokens, "
        "without a lookup of their own.",
        "dht_datagrams",
        "announces_direct",
    ),
    Family(
        "dhtdeb_dht_announces_received",
        "counter",
        "Keys other nodes announced to this one, by result: stored, dropped (caps on keys and "
        "peers per key) or bad_token.",
        "dht_datagrams",
        {"stored": "announces_stored", "dropped": "announces_dropped", "bad_token": "bad_tokens"},
        "result",
    ),
    Family(
        "dhtdeb_dht_lookups",
        "counter",
        "DHT lookups by purpose: find_peers (holders of a file), announce (the nodes to tell), "
        "find_node (joining, bucket refresh). Those with no node to ask are not in "
        "dhtdeb_dht_lookup_duration_seconds.",
        "dht_datagrams",
        {purpose: f"lookups_{purpose}" for purpose in LOOKUP_PURPOSES},
        "purpose",
    ),
    Family(
        "dhtdeb_dht_datagrams",
        "counter",
        "DHT datagrams by direction.",
        "dht_datagrams",
        {"sent": "datagrams_sent", "received": "datagrams_received"},
        "direction",
    ),
    Family(
        "dhtdeb_dht_datagram_bytes",
        "counter",
        "Bytes of DHT datagrams by direction.",
        "dht_datagrams",
        {"sent": "bytes_sent", "received": "bytes_received"},
        "direction",
    ),
    Family(
        "dhtdeb_dht_requests_received",
        "counter",
        "DHT requests from other nodes, by method (rate-limited ones left out).",
        "dht_datagrams",
        {method: f"requests_{method}" for method in _DHT_METHODS},
        "method",
    ),
    Family(
        "dhtdeb_dht_dropped_datagrams",
        "counter",
        "Datagrams dropped, by reason: malformed, rate_limited (per-source limit), "
        "unexpected_reply (no such request outstanding), internal_error.",
        "dht_datagrams",
        {
            "malformed": "malformed",
            "rate_limited": "rate_limited",
            "unexpected_reply": "unexpected_replies",
            "internal_error": "internal_errors",
        },
        "reason",
    ),
    Family(
        "dhtdeb_dht_request_timeouts",
        "counter",
        "DHT requests of this node that got no reply in time.",
        "dht_datagrams",
        "timeouts",
    ),
    Family(
        "dhtdeb_dht_requests_unsent",
        "counter",
        "DHT requests of this node not sent: too many outstanding.",
        "dht_datagrams",
        "requests_refused",
    ),
    Family(
        "dhtdeb_dht_batched_requests",
        "counter",
        "DHT requests of this node carrying several keys.",
        "dht_datagrams",
        "batched_requests",
    ),
    Family(
        "dhtdeb_dht_batched_keys_received",
        "counter",
        "Keys in DHT requests from others that carried several keys.",
        "dht_datagrams",
        "batched_keys",
    ),
    Family(
        "dhtdeb_dht_replies_trimmed",
        "counter",
        "DHT replies shortened to fit the datagram size or the anti-amplification limit.",
        "dht_datagrams",
        "replies_trimmed",
    ),
    Family(
        "dhtdeb_dht_replies_unsent",
        "counter",
        "DHT replies not sent: too big even when emptied.",
        "dht_datagrams",
        "replies_refused",
    ),
    Family(
        "dhtdeb_dht_reachability_tests",
        "counter",
        "Dial-back tests of this node, by verdict: unreachable (behind NAT or a firewall: it "
        "announces nothing until a later test or a stranger's request), reachable, or "
        "inconclusive (every node that could dial it had been written to lately).",
        "dht_datagrams",
        {
            "reachable": "dial_tests_reachable",
            "unreachable": "dial_tests_unreachable",
            "inconclusive": "dial_tests_inconclusive",
        },
        "verdict",
    ),
    Family(
        "dhtdeb_dht_socket_errors",
        "counter",
        "Errors of the DHT's UDP socket (ICMP unreachable, failed sends).",
        "dht_datagrams",
        "socket_errors",
    ),
)

LOOKUP_DURATION = "dhtdeb_dht_lookup_duration_seconds"
BUILD_INFO = "dhtdeb_build_info"


def _number(group: Mapping[str, object], key: str, *, sparse: bool) -> float:
    value = group.get(key, 0) if sparse else group[key]
    if not isinstance(value, int | float):
        raise TypeError(f"status value {key!r} is not a number: {value!r}")
    return float(value)


class _DaemonCollector(Collector):
    def __init__(self, status: StatusProvider, lookups: LookupHistograms) -> None:
        self._status = status
        self._lookups = lookups

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        info = GaugeMetricFamily(BUILD_INFO, "The running dhtdeb's version.", labels=["version"])
        info.add_metric([str(status.get("version", ""))], 1.0)
        yield info
        for family in FAMILIES:
            group = status.get(family.group, {})
            if not isinstance(group, dict):
                raise TypeError(f"status group {family.group!r} is not a dict")
            labels = [family.label] if family.label else []
            metric: CounterMetricFamily | GaugeMetricFamily
            if family.kind == "counter":
                metric = CounterMetricFamily(family.name, family.help, labels=labels)
            else:
                metric = GaugeMetricFamily(family.name, family.help, labels=labels)
            for values, key in family.keys():
                sparse = family.group in _SPARSE_GROUPS
                metric.add_metric(list(values), _number(group, key, sparse=sparse))
            yield metric
        yield self._lookup_durations()

    def _lookup_durations(self) -> HistogramMetricFamily:
        durations = HistogramMetricFamily(
            LOOKUP_DURATION,
            "Durations of DHT lookups that had nodes to ask, by purpose (see "
            "dhtdeb_dht_lookups_total).",
            labels=["purpose"],
        )
        histograms = self._lookups()
        for purpose in LOOKUP_PURPOSES:
            histogram = histograms.get(purpose) or Histogram()
            buckets = [
                ("+Inf" if bound == float("inf") else repr(bound), float(count))
                for bound, count in histogram.cumulative()
            ]
            durations.add_metric([purpose], buckets, histogram.sum)
        return durations


def metrics_renderer(
    status: StatusProvider, lookups: LookupHistograms | None = None
) -> Callable[[], bytes]:
    """The body of /metrics: dhtdeb's families, and the process' own (CPU, memory, files)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DaemonCollector(status, lookups or dict))
    ProcessCollector(registry=registry)
    return lambda: generate_latest(registry)
