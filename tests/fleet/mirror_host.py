"""The fleet's mirror as a test sees it: a `fleet.mirror_process` in the mirror's namespace.

Owns: that subprocess (started, stopped, killed with its namespace), the JSON-lines conversation
with it, and the mirror's numbers as a test wants them: body bytes by path, .deb bytes versus index
bytes, the request and response logs. Trusts: the mirror process to answer each command with one
line (see mirror_process.py for the protocol).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from support.mirror import RequestRecord, ResponseRecord

from .netns import Namespace

TESTS_DIR = Path(__file__).resolve().parent.parent
_START_TIMEOUT = 30.0
_REPLY_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_POLL = 0.02


class MirrorFailed(AssertionError):
    """The mirror process died, did not start, or refused a command."""


@dataclass(frozen=True, slots=True)
class MirrorBytes:
    """Body bytes the mirror sent, by kind of file."""

    deb: int  # pool/…/*.deb
    index: int  # dists/… (InRelease, Release*, Packages*, Translation*, by-hash)
    other: int

    @property
    def total(self) -> int:
        return self.deb + self.index + self.other


def classify(path: str) -> str:
    """ "deb", "index" or "other" for an archive-relative path."""
    if path.endswith(".deb"):
        return "deb"
    if path.startswith("dists/"):
        return "index"
    return "other"


class MirrorHost:
    """The archive served over HTTP from `address`:`port` inside `namespace`.

    `url` is what apt's sources name (http://ADDRESS/debian). Counters are read on demand; each
    call is one round trip to the mirror process."""

    def __init__(
        self,
        namespace: Namespace,
        address: str,
        root: Path,
        *,
        port: int = 80,
        prefix: str = "debian",
        log_file: Path | None = None,
    ) -> None:
        self.namespace = namespace
        self.address = address
        self.root = root
        self.port = port
        self.prefix = prefix.strip("/")
        self.log_file = log_file
        self._process: subprocess.Popen[str] | None = None
        self._stdin: IO[str] | None = None
        self._stdout: IO[str] | None = None
        self._log: IO[bytes] | None = None
        self._replies: queue.Queue[str | None] | None = None
        self._lock = threading.Lock()
        self._up = False

    # --- addresses --------------------------------------------------------------------------------

    @property
    def host_port(self) -> str:
        return self.address if self.port == 80 else f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        """The archive's base URL, e.g. http://10.77.0.2/debian (no trailing slash)."""
        return f"http://{self.host_port}/{self.prefix}"

    def url_for(self, path: str) -> str:
        return f"{self.url}/{path.lstrip('/')}"

    @property
    def is_up(self) -> bool:
        return self._up

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self, timeout: float = _START_TIMEOUT) -> MirrorHost:
        if self._process is not None:
            raise RuntimeError("mirror already started")
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(TESTS_DIR), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        argv = [*self.namespace.exec_prefix, sys.executable, "-m", "fleet.mirror_process"]
        argv += ["--root", str(self.root), "--host", "0.0.0.0", "--port", str(self.port)]
        argv += ["--prefix", self.prefix]
        stderr: IO[bytes] | int = subprocess.DEVNULL
        if self.log_file is not None:
            self._log = self.log_file.open("ab")
            stderr = self._log
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            text=True,
            start_new_session=True,
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._stdin, self._stdout = self._process.stdin, self._process.stdout
        self._replies = queue.Queue()
        threading.Thread(
            target=self._pump,
            args=(self._stdout, self._replies),
            name="mirror-replies",
            daemon=True,
        ).start()
        ready = self._read_line(timeout)
        if not ready.get("ready"):
            raise MirrorFailed(f"mirror did not start: {ready}{self._log_tail()}")
        self._up = True
        return self

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Ask the mirror process to exit; kill it if it does not."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            try:
                with self._lock:
                    self._send({"op": "stop"})
                    self._read_line(timeout)
            except (MirrorFailed, OSError, TimeoutError):
                pass
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        for stream in (self._stdin, self._stdout, self._log):
            if stream is not None:
                stream.close()
        self._stdin = self._stdout = self._log = None
        self._replies = None
        self._process = None
        self._up = False

    def down(self) -> None:
        """Close the listening socket and cut open connections: clients get "connection
        refused", as from a dead mirror. Counters are kept."""
        self._command("down")
        self._up = False

    def up(self) -> None:
        """Listen again on the same address and port."""
        self._command("up")
        self._up = True

    # --- observations -----------------------------------------------------------------------------

    def bytes_by_path(self) -> dict[str, int]:
        """Body bytes sent per archive-relative path ("pool/main/…deb", "dists/…")."""
        data = self._command("bytes")["bytes"]
        return {str(k): int(v) for k, v in data.items()}

    def bytes_sent(self, path: str | None = None) -> int:
        counts = self.bytes_by_path()
        return counts.get(path, 0) if path is not None else sum(counts.values())

    def bytes_by_kind(self) -> MirrorBytes:
        totals = {"deb": 0, "index": 0, "other": 0}
        for path, count in self.bytes_by_path().items():
            totals[classify(path)] += count
        return MirrorBytes(**totals)

    def bytes_by_client(self) -> dict[str, dict[str, int]]:
        """Body bytes sent per client address, then per archive-relative path: each fleet host
        reaches the mirror from its own address (its daemon and a direct apt alike)."""
        data = self._command("bytes_by_client")["clients"]
        return {str(c): {str(p): int(n) for p, n in paths.items()} for c, paths in data.items()}

    def bytes_by_kind_and_client(self) -> dict[str, MirrorBytes]:
        """`bytes_by_kind` for each client address."""
        result = {}
        for client, paths in self.bytes_by_client().items():
            totals = {"deb": 0, "index": 0, "other": 0}
            for path, count in paths.items():
                totals[classify(path)] += count
            result[client] = MirrorBytes(**totals)
        return result

    def deb_bytes(self) -> int:
        return self.bytes_by_kind().deb

    def index_bytes(self) -> int:
        return self.bytes_by_kind().index

    def requests(self, since: int = 0) -> list[RequestRecord]:
        """The request log from entry `since` on (in the order received)."""
        data = self._command("requests", since=since)["requests"]
        return [
            RequestRecord(
                method=r["method"],
                target=r["target"],
                path=r["path"],
                headers=tuple((str(k), str(v)) for k, v in r["headers"]),
                peer=(str(r["peer"][0]), int(r["peer"][1])),
                version=r["version"],
            )
            for r in data
        ]

    def responses(self, since: int = 0) -> list[ResponseRecord]:
        data = self._command("responses", since=since)["responses"]
        return [ResponseRecord(**r) for r in data]

    def reset(self) -> None:
        """Zero the byte counters and clear the logs."""
        self._command("reset")

    def wait_for(
        self, condition: Callable[[MirrorHost], bool], timeout: float = 30.0, what: str = ""
    ) -> None:
        """Poll `condition(self)` until it holds, else TimeoutError."""
        deadline = time.monotonic() + timeout
        while not condition(self):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"mirror condition {what} not reached within {timeout}s")
            time.sleep(_POLL)  # polling another process's state, with a deadline

    # --- the conversation -------------------------------------------------------------------------

    def _command(self, op: str, **args: Any) -> dict[str, Any]:
        with self._lock:
            self._send({"op": op, **args})
            reply = self._read_line(_REPLY_TIMEOUT)
        if not reply.get("ok"):
            raise MirrorFailed(f"mirror refused {op}: {reply.get('error')}")
        return reply

    def _send(self, command: dict[str, Any]) -> None:
        if self._stdin is None:
            raise MirrorFailed("mirror not started")
        try:
            self._stdin.write(json.dumps(command) + "\n")
            self._stdin.flush()
        except BrokenPipeError as exc:
            raise MirrorFailed(f"mirror process is gone{self._log_tail()}") from exc

    def _read_line(self, timeout: float) -> dict[str, Any]:
        if self._replies is None or self._process is None:
            raise MirrorFailed("mirror not started")
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            self._process.kill()
            raise MirrorFailed(
                f"mirror did not answer within {timeout}s{self._log_tail()}"
            ) from None
        if line is None:
            code = self._process.poll()
            raise MirrorFailed(f"mirror process ended (exit {code}){self._log_tail()}")
        data = json.loads(line)
        if not isinstance(data, dict):
            raise MirrorFailed(f"mirror answered {line!r}")
        return data

    @staticmethod
    def _pump(stdout: IO[str], replies: queue.Queue[str | None]) -> None:
        """Hand each line the mirror prints to the conversation; None at its end."""
        for line in stdout:
            replies.put(line)
        replies.put(None)

    def _log_tail(self, lines: int = 30) -> str:
        if self.log_file is None:
            return ""
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n" + "\n".join(text.splitlines()[-lines:])
