"""The command line's side of the running daemon's local pages (`/status.json`, `/cache.json`,
`/cache/<action>/<sha256>`, `/peers/<sha256>` on the proxy port).

Owns: finding the daemon (`--url`, else `<state-dir>/addresses.json`, else the default address),
one HTTP exchange per call, and turning what goes wrong into `DaemonUnreachable` (nothing listens,
with the sentence to print) or `DaemonAnswerError` (it answered something unusable). Trusts the
daemon's JSON only as far as its type: callers check the shapes they read. Never goes through an
environment proxy (`http_proxy` may well point at this very daemon).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from dhtdeb.errors import DhtdebError

DEFAULT_URL = "http://127.0.0.1:9977"
TIMEOUT = 60.0  # /peers/ waits up to 30 s for a DHT lookup
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class DaemonUnreachable(DhtdebError):
    """Nothing answers at the daemon's address (not running, or elsewhere)."""


class DaemonAnswerError(DhtdebError):
    """The daemon answered, but not with what was asked for."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, object]


def daemon_url(url: str | None, state_dir: Path | None) -> str:
    """`url` as given, else where the daemon of `state_dir` said it listens, else the default."""
    if url:
        return url.rstrip("/")
    from dhtdeb.app import default_state_dir

    addresses = (state_dir or default_state_dir()) / "addresses.json"
    try:
        return "http://" + str(json.loads(addresses.read_text())["proxy"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_URL


def _unreachable(base: str, reason: object) -> DaemonUnreachable:
    if isinstance(reason, ConnectionRefusedError):
        why = "connection refused"
    elif isinstance(reason, TimeoutError):
        why = "no answer (timed out)"
    elif isinstance(reason, OSError) and reason.strerror:
        why = reason.strerror.lower()
    else:
        why = str(reason)
    return DaemonUnreachable(
        f"dhtdeb is not running at {base}: {why}; start it with `dhtdeb serve` "
        "(or `systemctl start dhtdeb`), or point --url/--state-dir at it"
    )


def complaint(error: DhtdebError) -> str:
    """The line to print for a failed exchange."""
    return str(error) if isinstance(error, DaemonUnreachable) else f"dhtdeb: {error}"


class DaemonClient:
    def __init__(self, base: str, *, timeout: float = TIMEOUT) -> None:
        self.base = base.rstrip("/")
        self._timeout = timeout

    def get(self, path: str) -> dict[str, object]:
        answer = self._exchange("GET", path)
        if answer.status != 200:
            raise DaemonAnswerError(f"{self.base}{path}: HTTP {answer.status}")
        return answer.body

    def post(self, path: str) -> Answer:
        """An action: its JSON answer whatever the status (404, 409 carry an "error")."""
        return self._exchange("POST", path)

    def _exchange(self, method: str, path: str) -> Answer:
        url = f"{self.base}{path}"
        request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
        try:
            with _DIRECT.open(request, timeout=self._timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
            exc.close()
        except urllib.error.URLError as exc:
            raise _unreachable(self.base, exc.reason) from None
        except (OSError, ValueError) as exc:  # reset mid-answer, a malformed --url
            raise _unreachable(self.base, exc) from None
        try:
            body = json.loads(raw)
        except ValueError:
            text = raw.decode(errors="replace").strip()
            raise DaemonAnswerError(f"{url}: HTTP {status}: {text[:200]}") from None
        if not isinstance(body, dict):
            raise DaemonAnswerError(f"{url}: expected a JSON object")
        return Answer(status, body)
