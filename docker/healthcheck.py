"""Container health check: exit 0 when a Celery worker on this host answers a ping over the broker.

A worker's node name is ``NAME@HOST`` and compose names them ``...@%h`` (``%h``: the container's
hostname), while ``dfscan worker`` without ``--name`` uses ``dfscan-QUEUES@HOST-PID``. Both match.
A ping goes through Redis, so an unhealthy broker also makes the worker unhealthy, which is the truth:
it cannot receive work. Run as ``python docker/healthcheck.py [SECONDS]`` (how long to collect ping
replies, default 5); needs DFSCAN_BROKER_URL.
"""

from __future__ import annotations

import socket
import sys

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
    print("healthy: " + ", ".join(local))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
