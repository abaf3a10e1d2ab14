"""An Okta-compatible org on loopback, faithful to what Okta enforces for a risk provider.

Used by the tests, ``forwarder demo`` and ``forwarder sandbox``. It serves:

* ``POST /oauth2/v1/token``: client credentials with a ``private_key_jwt`` assertion;
* ``POST /api/v1/risk/events/ip``: schema, limits and the per-provider rate window;
* the admin API a provisioning script uses (``SSWS`` token): ``/oauth2/v1/clients``,
  ``/api/v1/apps/{id}/grants``, ``/api/v1/risk/providers[/{id}]``;
* ``/_sandbox/*``: what was accepted, every call and token request, and injected faults.

::

    org = SandboxOrg(clock=FakeClock())
    async with serve(org) as base_url:
        ...

Layout: ``state`` (the org, no HTTP) uses ``tokens``/``assertion``/``clients`` (the
authorization server), ``validation`` (event bodies), ``resources`` (providers, grants),
``window`` (rate limit), ``faults`` and ``records``; ``server`` is the aiohttp face.
"""

from forwarder.sandbox.records import AcceptedCall, CallRecord, TokenRecord
from forwarder.sandbox.server import build_app, serve
from forwarder.sandbox.state import SandboxOrg

__all__ = ["AcceptedCall", "CallRecord", "SandboxOrg", "TokenRecord", "build_app", "serve"]
