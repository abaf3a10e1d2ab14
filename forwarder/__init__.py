"""forwarder: durable, budget-aware delivery of IP risk signals to Okta orgs.

Pipeline: detectors -> ingest -> store -> dispatcher (budget, batching) -> sender
(tokens) -> Okta, with config, telemetry and the CLI at the edges.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("forwarder")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
