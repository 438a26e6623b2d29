"""Container health check: exit 0 when a Celery worker on this host answers a ping over the broker.

A worker's node name is ``NAME@HOST`` and compose names them ``...@%h`` (``%h``: the container's
hostname), while ``dfscan worker`` without ``--name`` uses ``dfscan-QUEUES@HOST-PID``. Both match.
A ping goes through Redis, so an unhealthy broker also makes the worker unhealthy, which is the truth:
it cannot receive work. When the worker serves metrics (``DFSCAN_METRICS_PORT``), its ``/readyz`` must
answer 200 too: a worker whose device failed for good (``DEVICE_FAULT``) fails it while it exits.
Run as ``python docker/healthcheck.py [SECONDS]`` (how long to collect ping replies, default 5); needs
DFSCAN_BROKER_URL.
"""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.request

from dfscan.queueing import new_celery_app
from dfscan.settings import get_settings

TIMEOUT_S = 5.0


def on_this_host(node: str, hostname: str) -> bool:
    host = node.partition("@")[2]
    return host == hostname or host.startswith(hostname + "-") or host.startswith(hostname + ".")


def main(argv: list[str]) -> int:
    timeout = float(argv[0]) if argv else TIMEOUT_S
    hostname = socket.gethostname()
    app = new_celery_app(get_settings())
    try:
        replies = app.control.inspect(timeout=timeout).ping() or {}
    except Exception as exc:  # the broker itself is down: say so, and report unhealthy
        print(f"unhealthy: broker unreachable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        app.close()
    local = sorted(node for node, reply in replies.items() if on_this_host(node, hostname))
    if not local:
        print(f"unhealthy: no worker on {hostname} answered (others: {sorted(replies)})", file=sys.stderr)
        return 1
    port = get_settings().metrics_port
    if port:
        problem = not_ready(port, timeout)
        if problem:
            print(f"unhealthy: {problem}", file=sys.stderr)
            return 1
    print("healthy: " + ", ".join(local))
    return 0


def not_ready(port: int, timeout: float) -> str:
    """Why the worker's ``/readyz`` on this host is not 200 ("" when it is)."""
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 (loopback, fixed URL)
            return "" if answer.status == 200 else f"{url} answered {answer.status}"
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}: {exc.read(300).decode(errors='replace').strip()}"
    except OSError as exc:
        return f"{url} unreachable: {exc}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
