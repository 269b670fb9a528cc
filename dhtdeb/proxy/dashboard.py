"""The dashboard at `/` on the proxy port: one self-contained HTML page.

Owns: the page's layout, its tables and the small script that polls /status.json every 2 s and
draws the charts on <canvas>. The tables are rendered here from the same status dict as
/status.json, so the page reads without JavaScript; the script only updates their cells, redraws
the rows of the two lists (recent transfers, known peers: proxy/dashboard_lists.py) and draws.
No external asset: no CDN, no font, no image, nothing fetched but /status.json.
Trusts nothing it shows: every key, value and URL goes through `html.escape` (URLs and names in the
status and the store come from mirrors, peers and apt).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dhtdeb.cli_status import LABELS, TITLES, human_bytes
from dhtdeb.proxy.dashboard_lists import LISTS_JSON, PEER_COLUMNS, TRANSFER_COLUMNS, span, table
from dhtdeb.proxy.dashboard_lists import escape as _e

RECENT_FILES = 12  # stored files shown, most recently used first


@dataclass(frozen=True, slots=True)
class RecentFile:
    """A stored file as the dashboard lists it; `url` is what the archive index knows it by."""

    sha256: str
    size: int
    last_used: float
    pinned: bool
    readers: int
    url: str | None


def _label(key: str) -> str:
    return LABELS.get(key, key.replace("_", " "))


def _is_bytes(group: str, key: str) -> bool:
    return group == "bytes" or key == "bytes" or key.endswith("_bytes")


def _cell(group: str, key: str, value: object) -> str:
    """The value exactly as /status.json has it (data-k: the script updates it), then a
    human-readable size for byte counts."""
    human = ""
    if isinstance(value, int) and not isinstance(value, bool) and _is_bytes(group, key):
        human = human_bytes(value) if value >= 1024 else ""
    shown = str(value).lower() if isinstance(value, bool) else value
    return (
        f'<td class="n" data-k="{_e(group)}.{_e(key)}">{_e(shown)}</td>'
        f'<td class="h" data-h="{_e(group)}.{_e(key)}">{_e(human)}</td>'
    )


def _group_table(group: str, values: Mapping[str, object]) -> str:
    title = TITLES.get(group, group.replace("_", " "))
    rows = "".join(
        f"<tr><th>{_e(_label(key))}</th>{_cell(group, key, value)}</tr>"
        for key, value in values.items()
    )
    return f'<section><h3>{_e(title)}</h3><table data-group="{_e(group)}">{rows}</table></section>'


def _share(status: Mapping[str, object]) -> str:
    received = status.get("bytes")
    if not isinstance(received, Mapping):
        return "-"
    peers, mirror = received.get("from_peers", 0), received.get("from_mirror", 0)
    if not isinstance(peers, int) or not isinstance(mirror, int) or peers + mirror == 0:
        return "-"
    return f"{100 * peers / (peers + mirror):.1f} %"


def _recent_table(files: Sequence[RecentFile], now: float) -> str:
    if not files:
        return "<p>No files stored yet.</p>"
    rows = "".join(
        "<tr>"
        f'<td class="u">{_e(f.url or f.sha256)}</td>'
        f'<td class="n">{f.size}</td><td class="h">{_e(human_bytes(f.size))}</td>'
        f'<td class="n">{_e(f"{span(now - f.last_used)} ago" if f.last_used else "-")}</td>'
        f"<td>{'pinned' if f.pinned else ''}{' sending' if f.readers else ''}</td>"
        "</tr>"
        for f in files
    )
    return (
        "<table><tr><th>file</th><th>bytes</th><th></th><th>last used</th><th></th></tr>"
        f"{rows}</table>"
    )


def render(status: Mapping[str, object], recent: Sequence[RecentFile], now: float) -> str:
    """The whole page for this status and these recently used files (`now`: wall clock)."""
    groups = {k: v for k, v in status.items() if isinstance(v, Mapping) and v}
    order = list(TITLES)
    tables = "".join(
        _group_table(group, groups[group])
        for group in sorted(groups, key=lambda g: order.index(g) if g in order else 99)
    )
    version, node = _e(status.get("version", "?")), _e(status.get("node_id", "?"))
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>dhtdeb {version}</title><style>{_CSS}</style></head>"
        f"<body><header><h1>dhtdeb</h1><span>version {version}, node <code>{node}</code></span>"
        "<span id=live class=off>static: JavaScript off</span></header>"
        "<div id=summary><div>share from peers <b id=share>"
        f"{_e(_share(status))}</b></div></div>"
        f"<div id=charts>{_CHARTS}</div>"
        "<h2>Recent transfers</h2>"
        f"{table('transfers', status.get('transfers'), TRANSFER_COLUMNS, now, _NO_TRANSFERS)}"
        "<h2>Known peers</h2>"
        f"{table('peers', status.get('peers'), PEER_COLUMNS, now, _NO_PEERS)}"
        "<p class=note>Sent: what this node's peer server sent to the peer's host (shown when "
        "one known peer has that address); <code>/peers/&lt;sha256&gt;</code> looks up the "
        "holders of one file.</p>"
        "<h2>Recently used files</h2>"
        f"{_recent_table(recent, now)}"
        f"<h2>Counters</h2><div id=tables>{tables}</div>"
        f"<script>{_SCRIPT}</script></body></html>"
    )


_NO_TRANSFERS = "No file fetched or served since the daemon started."
_NO_PEERS = "No peer known yet."

_CHARTS = "".join(
    f'<figure><figcaption>{title}</figcaption><canvas id="{cid}" width=400 height=150>'
    "</canvas></figure>"
    for cid, title in (
        ("c-bytes", "Bytes received per second: peers / mirror"),
        ("c-share", "Share from peers (all time, %)"),
        ("c-cache", "Cache use (bytes)"),
        ("c-dht", "DHT contacts (routing table)"),
        ("c-lookup", "DHT lookup latency (mean per interval, ms)"),
        ("c-fail", "Verification failures and bans (all time)"),
    )
)

_CSS = """
body{font:14px system-ui,sans-serif;margin:0 1.5em 2em;color:#222;background:#fafafa}
header{display:flex;gap:1em;align-items:baseline;flex-wrap:wrap}h1{margin:.4em 0}
#live{margin-left:auto;padding:2px 8px;border-radius:8px;background:#ddd}
#live.on{background:#c8efc8}#live.err{background:#f6c6c6}
#summary{font-size:1.2em;margin:.3em 0}
#charts{display:none;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:8px}
.js #charts{display:grid}
figure{margin:0;background:#fff;border:1px solid #ddd;padding:4px}
figcaption{font-size:12px;color:#555}canvas{width:100%;height:150px}
#tables{display:flex;flex-wrap:wrap;gap:0 2em}h3{margin:.8em 0 .2em;font-size:1em}
table{border-collapse:collapse}th{text-align:left;font-weight:normal;color:#444;padding-right:1em}
td{padding:0 .4em}td.n{text-align:right;font-variant-numeric:tabular-nums}td.h{color:#777}
td.u{word-break:break-all;max-width:60em}.note{color:#666}
table.list{font-size:12px;background:#fff;border:1px solid #ddd}
table.list th{border-bottom:1px solid #ddd;padding:2px 6px}
table.list td{border-top:1px solid #eee;padding:1px 6px;vertical-align:top}
table.list td.url{word-break:break-all;max-width:38em}
td.bytes,td.seconds,td.ago,td.until{text-align:right;white-space:nowrap}
td.flag{color:#b22}
"""

# The charts keep the last 150 polls (5 min). Rates come from differences between polls, so a
# restarted daemon (counters going down) starts its lines over.
_SCRIPT = """
(function(){
"use strict";
document.documentElement.className="js";
var N=150,hist=[],prev=null,polls=0,live=document.getElementById("live"),LISTS=%LISTS%;
function num(v){return typeof v==="number"?v:0}
function g(s,a,b){var x=s[a];return x&&typeof x==="object"?num(x[b]):0}
function hb(n){var u=["B","KiB","MiB","GiB","TiB"],i=0;while(Math.abs(n)>=1024&&i<4){n/=1024;i++}
return i?n.toFixed(1)+" "+u[i]:(n%1?n.toFixed(1):String(n))+" B"}
function fmt(v,bytes){return bytes?hb(v):
(Math.abs(v)<10&&v%1?v.toPrecision(3):String(Math.round(v)))}
function draw(id,series,bytes){
var c=document.getElementById(id),x=c.getContext("2d"),w=c.width,h=c.height,l=58,t=8,b=18;
x.clearRect(0,0,w,h);var max=0;
series.forEach(function(s){s.p.forEach(function(v){if(v!==null&&v>max)max=v})});
if(max<=0)max=1;x.font="11px sans-serif";x.strokeStyle="#e4e4e4";x.fillStyle="#666";
for(var k=0;k<=2;k++){var y=t+(h-t-b)*k/2;x.beginPath();x.moveTo(l,y);x.lineTo(w,y);x.stroke();
x.fillText(fmt(max*(1-k/2),bytes),2,y+4)}
var lx=l,span=Math.max(hist.length-1,1);series.forEach(function(s){x.strokeStyle=x.fillStyle=s.c;
x.lineWidth=1.5;x.beginPath();var on=false,px=0,py=0;
s.p.forEach(function(v,i){if(v===null){on=false;return}
px=l+(w-l-4)*i/span;py=t+(h-t-b)*(1-v/max);if(on)x.lineTo(px,py);
else{x.moveTo(px,py);x.fillRect(px-2,py-2,4,4)}on=true});
x.stroke();if(on)x.fillRect(px-2,py-2,4,4);x.fillText(s.n,lx,h-4);lx+=x.measureText(s.n).width+14})}
function col(f){return hist.map(f)}
function render(){
draw("c-bytes",[{n:"peers",c:"#2a7",p:col(function(p){return p.rp})},
{n:"mirror",c:"#c63",p:col(function(p){return p.rm})}],true);
draw("c-share",[{n:"from peers",c:"#2a7",p:col(function(p){return p.share})}]);
draw("c-cache",[{n:"used",c:"#36c",p:col(function(p){return p.cache})},
{n:"limit",c:"#999",p:col(function(p){return p.limit||null})}],true);
draw("c-dht",[{n:"contacts",c:"#36c",p:col(function(p){return p.rt})}]);
var names={};hist.forEach(function(p){Object.keys(p.lat).forEach(function(k){names[k]=1})});
var cs=["#36c","#c63","#2a7","#939"];
draw("c-lookup",Object.keys(names).sort().map(function(k,i){return{n:k.replace(/_/g," "),c:cs[i%4],
p:col(function(p){return k in p.lat?p.lat[k]:null})}}));
draw("c-fail",[{n:"verification failures",c:"#c33",p:col(function(p){return p.vf})},
{n:"bans",c:"#939",p:col(function(p){return p.bans})}])}
function sum(o){var n=0;
if(o&&typeof o==="object")Object.keys(o).forEach(function(k){n+=num(o[k])});return n}
function sample(s,now){
var fp=g(s,"bytes","from_peers"),fm=g(s,"bytes","from_mirror"),p={rp:null,rm:null,lat:{},
share:fp+fm?100*fp/(fp+fm):null,cache:g(s,"cache","bytes"),limit:g(s,"cache","limit_bytes"),
rt:g(s,"dht","routing_table"),vf:sum(s.verify_failures),bans:sum(s.bans)};
var lk=s.dht_lookups||{};
if(prev&&now>prev.t&&fp>=prev.fp&&fm>=prev.fm){var dt=(now-prev.t)/1000;
p.rp=(fp-prev.fp)/dt;p.rm=(fm-prev.fm)/dt}
Object.keys(lk).forEach(function(k){if(!/_timed$/.test(k))return;var base=k.slice(0,-6),
n=num(lk[k]),sec=num(lk[base+"_seconds"]),o=prev&&prev.lk||{},dn=n-num(o[k]),
ds=sec-num(o[base+"_seconds"]);if(prev&&dn>0)p.lat[base]=1000*ds/dn;
else if(!prev&&n>0)p.lat[base]=1000*sec/n});
prev={t:now,fp:fp,fm:fm,lk:lk};hist.push(p);if(hist.length>N)hist.shift()}
function cells(s){
document.querySelectorAll("td[data-k]").forEach(function(td){
var k=td.getAttribute("data-k"),i=k.indexOf("."),gr=s[k.slice(0,i)];
if(!gr||typeof gr!=="object"||!(k.slice(i+1) in gr))return;var v=gr[k.slice(i+1)];
td.textContent=String(v);var hcell=td.nextElementSibling;
if(hcell&&typeof v==="number"&&/(^bytes\\.|\\.bytes$|_bytes$)/.test(k))
hcell.textContent=v>=1024?hb(v):""});
var fp=g(s,"bytes","from_peers"),fm=g(s,"bytes","from_mirror");
document.getElementById("share").textContent=fp+fm?(100*fp/(fp+fm)).toFixed(1)+" %":"-"}
function span(x){x=Math.max(0,Math.floor(x));
return x<120?x+" s":x<7200?Math.floor(x/60)+" min":Math.floor(x/3600)+" h"}
function raw(v){return v===null||v===undefined?"":typeof v==="boolean"?(v?"true":"false"):String(v)}
function shown(kind,v,now){
if(v===null||v===undefined||v==="")return /^(bytes|ago|until)$/.test(kind)?"-":"";
if(typeof v==="boolean")return kind==="flag"?(v?"banned":""):raw(v);
if(typeof v==="number"){if(kind==="ago")return span(now-v)+" ago";
if(kind==="until")return "in "+span(v-now);if(kind==="bytes"&&v%1===0)return hb(v);
if(kind==="seconds")return v.toFixed(2)+" s";return String(v)}
return kind==="node"?String(v).slice(0,12):String(v)}
function lists(s,now){Object.keys(LISTS).forEach(function(id){
var t=document.getElementById(id),cols=LISTS[id],body=document.createElement("tbody"),
recs=Array.isArray(s[id])?s[id].filter(function(r){return r!==null&&typeof r==="object"}):[];
if(!t)return;recs.forEach(function(r){var tr=document.createElement("tr");
cols.forEach(function(c){var td=document.createElement("td"),v=r[c[0]];td.className=c[2];
td.setAttribute("data-f",c[0]);td.setAttribute("data-v",raw(v));td.textContent=shown(c[2],v,now);
tr.appendChild(td)});body.appendChild(tr)});
t.replaceChild(body,t.tBodies[0]);document.getElementById(id+"-empty").hidden=recs.length>0})}
function poll(){
fetch("/status.json",{cache:"no-store"}).then(function(r){
if(!r.ok)throw new Error("HTTP "+r.status);return r.json()}).then(function(s){
sample(s,Date.now());cells(s);lists(s,Date.now()/1000);render();polls++;
live.className="on";live.textContent="live, every 2 s";
document.body.setAttribute("data-drawn",String(polls))}).catch(function(e){
console.error("dhtdeb dashboard: "+e.message);
live.className="err";live.textContent="not updating: "+e.message}).then(function(){
setTimeout(poll,2000)})}
poll()})();
""".replace("%LISTS%", LISTS_JSON)


def _source_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


# Only this page's own script and style run, and it may fetch only from the proxy itself: an
# escaping slip could not load or send anything elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; connect-src 'self'; "
    f"script-src {_source_hash(_SCRIPT)}; style-src {_source_hash(_CSS)}; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
