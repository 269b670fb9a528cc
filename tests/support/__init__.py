"""The real-parts test harness: a signed Debian archive, an HTTP mirror that counts what it sends,
the real apt-get with an isolated configuration, and the dhtdeb daemon as a subprocess.

Test files import it as `support` (pytest puts tests/ on sys.path for tests/conftest.py).
Nothing here imports dhtdeb: the daemon is driven only through its command line and HTTP ports.
"""

import time
from collections.abc import Callable

POLL_INTERVAL = 0.01


def wait_until(
    condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition"
) -> None:
    """Poll `condition` until it holds or `timeout` passes (then TimeoutError). For state another
    process changes (a file apt writes, a daemon's status); never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(POLL_INTERVAL)
