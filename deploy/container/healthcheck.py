"""Container HEALTHCHECK: exit 0 when the daemon's ``/healthz`` answers 200, else 1.

Uses only the standard library (slim images have no curl). The address is the metrics
listener: ``FORWARDER_METRICS__LISTEN`` when set (the same override the daemon reads),
else the image's default ``0.0.0.0:9464``; a wildcard host is probed on loopback.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

# A wildcard listener is probed on loopback (these are addresses to map, not to bind).
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}  # noqa: S104


def healthz_url(listen: str) -> str:
    """The loopback URL of ``/healthz`` for a ``HOST:PORT`` metrics listener."""
    host, _, port = listen.rpartition(":")
    host = _WILDCARDS.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def main() -> int:
    url = healthz_url(os.environ.get("FORWARDER_METRICS__LISTEN", "0.0.0.0:9464"))
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:  # noqa: S310 (a fixed http URL)
            ok = resp.status == 200
    except (OSError, urllib.error.URLError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
