"""The fleet's mirror process: `python -m fleet.mirror_process --root DIR [--host H] [--port P]`,
run inside the mirror's network namespace, driven over stdin/stdout with JSON lines.

Owns: one `support.mirror.Mirror` at a time serving DIR under /debian/ (Range, If-Range,
keep-alive and pipelining as that class does), counters that survive the mirror going down and
up, and the command loop. Trusts: its parent (the only writer of stdin).

Protocol: the process prints {"ready": true, "port": P} once it listens, then answers each line
{"op": OP, ...} on stdin with one line {"ok": true, ...} or {"ok": false, "error": "..."}:
  bytes                  {"bytes": {path: body bytes sent}}
  bytes_by_client        {"clients": {client address: {path: body bytes sent}}}
  requests  [since: N]   {"requests": [record, ...], "total": N'}  (records N.. of the log)
  responses [since: N]   {"responses": [record, ...], "total": N'}
  reset                  counters and logs cleared
  down                   the listening socket is closed and open connections are cut: clients
                         get "connection refused", as from a dead mirror
  up                     listening again on the same port
  stop                   answers, then exits (so does end of input: the parent died)
"""

from __future__ import annotations

import argparse
import contextvars
import dataclasses
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from aiohttp import web
from support.mirror import Mirror, RequestRecord, ResponseRecord

# The client address of the request being served: every request is handled in its own task, so
# the body bytes `_count` sees belong to the address set at the start of its `_handle`.
_client: contextvars.ContextVar[str] = contextvars.ContextVar("mirror_client", default="")


class AttributingMirror(Mirror):
    """A Mirror that also counts body bytes per client address: each fleet host has its own
    address, so a test can tell how much of the mirror's traffic went to which machine."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._by_client: defaultdict[str, Counter[str]] = defaultdict(Counter)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        token = _client.set(str(peer[0]) if peer else "")
        try:
            return await super()._handle(request)
        finally:
            _client.reset(token)

    def _count(self, relative: str, n: int) -> None:
        super()._count(relative, n)
        with self._cond:
            self._by_client[_client.get()][relative] += n

    def reset_counters(self) -> None:
        super().reset_counters()
        with self._cond:
            self._by_client.clear()

    def bytes_by_client(self) -> dict[str, dict[str, int]]:
        with self._cond:
            return {client: dict(paths) for client, paths in self._by_client.items()}


class MirrorService:
    """A Mirror that can go down and come up again, with counters across its lives."""

    def __init__(self, root: Path, host: str, port: int, prefix: str) -> None:
        self.root = root
        self.host = host
        self.port = port
        self.prefix = prefix
        self._past_bytes: Counter[str] = Counter()
        self._past_by_client: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._past_requests: list[RequestRecord] = []
        self._past_responses: list[ResponseRecord] = []
        self._mirror: AttributingMirror | None = None

    def up(self) -> None:
        if self._mirror is None:
            mirror = AttributingMirror(
                self.root, prefix=self.prefix, port=self.port, host=self.host
            )
            self._mirror = mirror.start()
            self.port = mirror.port

    def down(self) -> None:
        if self._mirror is not None:
            self._mirror.stop()
            self._past_bytes.update(self._mirror.bytes_by_path())
            for client, paths in self._mirror.bytes_by_client().items():
                self._past_by_client[client].update(paths)
            self._past_requests += self._mirror.requests
            self._past_responses += self._mirror.responses
            self._mirror = None

    def bytes_by_path(self) -> dict[str, int]:
        total = Counter(self._past_bytes)
        if self._mirror is not None:
            total.update(self._mirror.bytes_by_path())
        return dict(total)

    def bytes_by_client(self) -> dict[str, dict[str, int]]:
        total: defaultdict[str, Counter[str]] = defaultdict(Counter)
        for client, paths in self._past_by_client.items():
            total[client].update(paths)
        if self._mirror is not None:
            for client, paths in self._mirror.bytes_by_client().items():
                total[client].update(paths)
        return {client: dict(paths) for client, paths in total.items()}

    def requests(self) -> list[RequestRecord]:
        live = self._mirror.requests if self._mirror is not None else []
        return [*self._past_requests, *live]

    def responses(self) -> list[ResponseRecord]:
        live = self._mirror.responses if self._mirror is not None else []
        return [*self._past_responses, *live]

    def reset(self) -> None:
        self._past_bytes.clear()
        self._past_by_client.clear()
        self._past_requests.clear()
        self._past_responses.clear()
        if self._mirror is not None:
            self._mirror.reset_counters()

    def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command.get("op")
        since = int(command.get("since", 0))
        if op == "bytes":
            return {"bytes": self.bytes_by_path()}
        if op == "bytes_by_client":
            return {"clients": self.bytes_by_client()}
        if op == "requests":
            records = self.requests()
            return {"requests": [_record(r) for r in records[since:]], "total": len(records)}
        if op == "responses":
            done = self.responses()
            return {"responses": [_record(r) for r in done[since:]], "total": len(done)}
        if op == "reset":
            self.reset()
            return {}
        if op == "down":
            self.down()
            return {}
        if op == "up":
            self.up()
            return {"port": self.port}
        raise ValueError(f"unknown op {op!r}")


def _record(record: RequestRecord | ResponseRecord) -> dict[str, Any]:
    return dataclasses.asdict(record)


def _reply(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleet.mirror_process")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--prefix", default="debian")
    args = parser.parse_args(argv)
    service = MirrorService(args.root, args.host, args.port, args.prefix)
    service.up()
    _reply({"ready": True, "port": service.port})
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                command = json.loads(line)
                if command.get("op") == "stop":
                    _reply({"ok": True})
                    break
                _reply({"ok": True, **service.handle(command)})
            except Exception as exc:  # reported to the parent, which raises it in the test
                _reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        service.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
