"""/metrics: every family a dashboard needs, with the type Prometheus expects, agreeing with
/status.json; and the example dashboard and alert rules in docs/ naming only metrics that exist.

One scenario with the DHT on (a bootstrap node and two daemons): A fetches the archive from the
mirror, B fetches a package A holds, so that bytes from peers, uploads, lookups and announces all
have something to count.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from support import wait_until
from support.apt import AptClientFactory, ProxyMode
from support.archive import SignedArchive
from support.daemon import DaemonProcess
from support.mirror import Mirror
from support.swarm import SwarmNode, bootstrap_node, swarm_node, wait_until_found

from dhtdeb.metrics import FAMILIES as EXPOSED

__all__ = ["bootstrap_node", "swarm_node"]  # fixtures, which pytest finds by name

DOCS = Path(__file__).resolve().parent.parent / "docs"
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# name (as the parser gives it: counters without _total) -> type, label, the /status.json group,
# and the status key of each series (by label value; "" for a family without a label).
FAMILIES: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "dhtdeb_received_bytes": (
        "counter",
        "source",
        "bytes",
        {"peers": "from_peers", "mirror": "from_mirror"},
    ),
    "dhtdeb_sent_bytes": (
        "counter",
        "destination",
        "bytes",
        {"apt": "to_apt", "peers": "to_peers"},
    ),
    "dhtdeb_requests": (
        "counter",
        "kind",
        "requests",
        {
            k: k
            for k in (
                "cache_hits",
                "from_peers",
                "from_mirror",
                "passed_through",
                "refused",
                "read_ahead",
                "stale_releases",
            )
        },
    ),
    "dhtdeb_cache_hits": ("counter", "", "requests", {"": "cache_hits"}),
    "dhtdeb_cache_misses": ("counter", "", "downloads", {"": "started"}),
    "dhtdeb_cache_evictions": ("counter", "", "cache", {"": "evictions"}),
    "dhtdeb_cache_files": ("gauge", "", "cache", {"": "files"}),
    "dhtdeb_cache_bytes": ("gauge", "", "cache", {"": "bytes"}),
    "dhtdeb_cache_limit_bytes": ("gauge", "", "cache", {"": "limit_bytes"}),
    "dhtdeb_verification_failures": (
        "counter",
        "kind",
        "verify_failures",
        {k: k for k in ("signature", "index", "peer", "mirror")},
    ),
    "dhtdeb_peer_bans": ("counter", "kind", "bans", {"lied": "lied", "misbehaved": "misbehaved"}),
    "dhtdeb_inquiries": ("counter", "", "inquiries", {"": "opened"}),
    "dhtdeb_downloads_active": ("gauge", "", "downloads", {"": "active"}),
    "dhtdeb_swarm_downloads_active": ("gauge", "", "downloads", {"": "active_in_swarm"}),
    "dhtdeb_peer_uploads": ("counter", "", "peer_server", {"": "uploads"}),
    "dhtdeb_peer_uploads_refused": ("counter", "", "peer_server", {"": "busy"}),
    "dhtdeb_peer_uploads_active": ("gauge", "", "peer_server", {"": "active_uploads"}),
    "dhtdeb_dht_enabled": ("gauge", "", "dht", {"": "enabled"}),
    "dhtdeb_dht_routing_table_nodes": ("gauge", "", "dht", {"": "routing_table"}),
    "dhtdeb_dht_stored_keys": ("gauge", "", "dht", {"": "stored_keys"}),
    "dhtdeb_dht_announced_files": ("gauge", "", "dht", {"": "announced"}),
    "dhtdeb_dht_lookups": (
        "counter",
        "purpose",
        "dht_datagrams",
        {p: f"lookups_{p}" for p in ("find_peers", "announce", "find_node")},
    ),
    "dhtdeb_dht_announces": (
        "counter",
        "result",
        "dht_datagrams",
        {
            "accepted": "announces_accepted",
            "unaccepted": "announces_unaccepted",
            "withheld": "announces_withheld",
        },
    ),
    "dhtdeb_dht_datagrams": (
        "counter",
        "direction",
        "dht_datagrams",
        {"sent": "datagrams_sent", "received": "datagrams_received"},
    ),
}
LOOKUP_HISTOGRAM = "dhtdeb_dht_lookup_duration_seconds"
# Names PromQL may use that a target does not expose: Prometheus makes `up` itself.
SYNTHETIC = {"up"}


def _scrape(daemon: DaemonProcess) -> tuple[dict[str, Metric], str]:
    with _DIRECT.open(f"{daemon.proxy_url}/metrics", timeout=10) as response:
        assert response.headers.get_content_type() == "text/plain"
        text = response.read().decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    return families, text


def _series(family: Metric, label: str) -> dict[str, float]:
    """Label value ("" without a label) -> value, of the plain samples (not _created)."""
    wanted = {family.name, f"{family.name}_total"}
    return {
        (sample.labels.get(label, "") if label else ""): sample.value
        for sample in family.samples
        if sample.name in wanted
    }


def _status_value(status: dict[str, Any], group: str, key: str) -> float:
    values = status[group]
    return float(values.get(key, 0) if group == "dht_datagrams" else values[key])


def _check_against_status(
    families: dict[str, Metric], before: dict[str, Any], after: dict[str, Any]
) -> None:
    """Every family exists with its type, label values and values: a /status.json read before
    and one after the scrape bracket each value (background work goes on: announces, pings)."""
    for name, (kind, label, group, series) in FAMILIES.items():
        assert name in families, f"{name} missing from /metrics"
        family = families[name]
        assert family.type == kind, f"{name} is a {family.type}, not a {kind}"
        values = _series(family, label)
        assert set(values) == set(series), f"{name}: {sorted(values)} != {sorted(series)}"
        for label_value, key in series.items():
            low, high = sorted(
                (_status_value(before, group, key), _status_value(after, group, key))
            )
            assert low <= values[label_value] <= high, f"{name}{{{label_value}}} vs {group}.{key}"
    # Every DHT counter of /status.json is exposed in some family.
    exposed = {
        key for family in EXPOSED if family.group == "dht_datagrams" for _, key in family.keys()
    }
    assert set(after["dht_datagrams"]) <= exposed, set(after["dht_datagrams"]) - exposed


def _check_lookup_histogram(families: dict[str, Metric], status: dict[str, Any]) -> None:
    histogram = families[LOOKUP_HISTOGRAM]
    assert histogram.type == "histogram"
    counts = {
        s.labels["purpose"]: s.value
        for s in histogram.samples
        if s.name == f"{LOOKUP_HISTOGRAM}_count"
    }
    assert set(counts) == {"find_peers", "announce", "find_node"}
    assert counts["find_peers"] > 0, counts
    # a file is announced with a lookup of its own, or straight to its last lookup's nodes
    assert counts["announce"] + status["dht_datagrams"].get("announces_direct", 0) > 0, counts
    for purpose, count in counts.items():
        buckets = [
            (s.labels["le"], s.value)
            for s in histogram.samples
            if s.name == f"{LOOKUP_HISTOGRAM}_bucket" and s.labels["purpose"] == purpose
        ]
        bounds = [float(le) for le, _ in buckets]
        assert bounds[0] == 0.001 and bounds[-2] == 10.0 and bounds[-1] == float("inf")
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
        assert buckets[-1][1] == count
        # Timed lookups are among those counted (some may have had nobody to ask).
        assert count <= _series(families["dhtdeb_dht_lookups"], "purpose")[purpose]
        assert status["dht_lookups"][f"{purpose}_timed"] >= count


def _promql_names(expression: str) -> set[str]:
    """Metric names in a PromQL expression: the identifiers left once strings, label matchers
    (`{...}`), range selectors (`[...]`), grouping clauses, functions and keywords are gone."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)
    without_matchers = re.sub(r"\{[^}]*\}", "", without_strings)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_matchers)
    without_grouping = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_ranges
    )
    names = set(re.findall(r"\b[a-zA-Z_:][\w:]*\b(?!\s*\()", without_grouping))
    return names - {"and", "or", "unless", "offset", "bool", "inf", "Inf", "NaN"}


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    expressions = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            expressions.append(target["expr"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            expressions.append(re.sub(r"^label_values\((\w+),.*$", r"\1", variable["definition"]))
    return expressions


def _alert_rules() -> list[dict[str, Any]]:
    """The rules of docs/prometheus-alerts.yml: parsed with PyYAML when it is installed, else
    read line by line (this file's own layout: `- alert:`, `expr:` inline or as a `|` block)."""
    text = (DOCS / "prometheus-alerts.yml").read_text()
    try:
        import yaml
    except ImportError:
        return _alert_rules_by_lines(text)
    document = yaml.safe_load(text)
    rules: list[dict[str, Any]] = [rule for g in document["groups"] for rule in g["rules"]]
    return rules


def _alert_rules_by_lines(text: str) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    block: list[str] | None = None
    block_indent = 0
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        assert "\t" not in line, "tabs in YAML"
        if block is not None:
            if stripped and indent <= block_indent:
                rules[-1]["expr"] = "\n".join(block)
                block = None
            else:
                block.append(stripped)
                continue
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("- alert:"):
            rules.append({"alert": stripped.split(":", 1)[1].strip()})
        elif stripped.startswith(("expr:", "for:", "severity:", "summary:")):
            key, value = (part.strip() for part in stripped.split(":", 1))
            assert rules, f"{key} outside a rule"
            if key == "expr" and value == "|":
                block, block_indent = [], indent
            elif key == "severity":
                rules[-1]["labels"] = {"severity": value}
            elif key == "summary":
                rules[-1]["annotations"] = {"summary": value}
            else:
                rules[-1][key] = value
    if block is not None:
        rules[-1]["expr"] = "\n".join(block)
    return rules


def _sample_names(families: dict[str, Metric]) -> set[str]:
    return {sample.name for family in families.values() for sample in family.samples}


def test_metrics_of_swarm_nodes(
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    swarm_node: SwarmNode,
    tmp_path: Path,
) -> None:
    a, b = swarm_node(), swarm_node()
    small = signed_archive.small_packages
    apt_a = apt_client(signed_archive, mirror, mode=ProxyMode.HTTP_PROXY, proxy=a.proxy)
    apt_a.update().check()
    apt_a.download([p.name for p in small], tmp_path / "a").check()
    apt_a.download([small[0].name], tmp_path / "a-again").check()  # a cache hit
    wait_until_found(b, [a], small[1].sha256)
    apt_b = apt_client(signed_archive, mirror, mode=ProxyMode.HTTP_PROXY, proxy=b.proxy)
    apt_b.update().check()
    apt_b.download([small[1].name], tmp_path / "b").check()
    wait_until(
        lambda: a.status()["downloads"]["active"] == 0 and a.status()["dht"]["unannounced"] == 0,
        what="A's downloads and announces done",
    )

    before = a.status()
    families, _ = _scrape(a)
    after = a.status()
    _check_against_status(families, before, after)
    _check_lookup_histogram(families, after)
    assert families["dhtdeb_build_info"].type == "gauge"
    assert "process_resident_memory_bytes" in families
    requests = _series(families["dhtdeb_requests"], "kind")
    assert requests["cache_hits"] >= 1 and requests["from_mirror"] >= len(small)
    assert _series(families["dhtdeb_cache_misses"], "")[""] >= len(small)
    assert _series(families["dhtdeb_cache_files"], "")[""] >= len(small)
    assert _series(families["dhtdeb_peer_uploads"], "")[""] >= 1
    assert _series(families["dhtdeb_sent_bytes"], "destination")["peers"] >= small[1].size
    assert _series(families["dhtdeb_dht_routing_table_nodes"], "")[""] >= 1
    assert _series(families["dhtdeb_dht_announces"], "result")["accepted"] >= len(small)

    b_families, _ = _scrape(b)
    assert _series(b_families["dhtdeb_received_bytes"], "source")["peers"] >= small[1].size
    assert _series(b_families["dhtdeb_requests"], "kind")["from_peers"] == 1

    # The example dashboard and alert rules name only what a daemon exposes.
    exposed = _sample_names(families) | SYNTHETIC
    for expression in _dashboard_expressions():
        assert _promql_names(expression) <= exposed, (expression, _promql_names(expression))
    rules = _alert_rules()
    for rule in rules:
        assert _promql_names(rule["expr"]) <= exposed, (rule["alert"], rule["expr"])


def test_example_dashboard_and_alert_rules_are_well_formed() -> None:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    titles = {panel["title"] for panel in dashboard["panels"]}
    for wanted in (
        "Share of bytes from peers",
        "Bytes received by source",
        "Cache use",
        "DHT lookup latency",
        "Verification failures by kind",
        "Peer bans by kind",
        "Active transfers",
    ):
        assert wanted in titles, wanted
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    latency = next(p for p in dashboard["panels"] if p["title"] == "DHT lookup latency")
    quantiles = " ".join(t["expr"] for t in latency["targets"])
    assert "histogram_quantile(0.5," in quantiles and "histogram_quantile(0.95," in quantiles

    rules = _alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for wanted in (
        "DhtdebDown",
        "DhtdebVerificationFailures",
        "DhtdebOffloadCollapsed",
        "DhtdebDhtRoutingTableEmpty",
        "DhtdebCacheNearLimit",
    ):
        assert wanted in names, wanted
    for rule in rules:
        assert rule.get("expr"), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


def test_promql_name_extraction() -> None:
    assert _promql_names(
        'sum by (source) (rate(dhtdeb_received_bytes_total{source="peers",instance=~"$x"}'
        "[$__rate_interval])) / (dhtdeb_cache_limit_bytes > 0) and on (instance) up == 0"
    ) == {"dhtdeb_received_bytes_total", "dhtdeb_cache_limit_bytes", "up"}
    assert _promql_names("increase(x_total[1h]) > 200e6") == {"x_total"}
    assert _promql_names('histogram_quantile(0.95, sum by (le) (rate(h_bucket{a="b"}[5m])))') == {
        "h_bucket"
    }
