"""1,000 customer orgs in one daemon: /readyz and /metrics stay readable.

One sandbox stands in for every org (each client id its own org, window and state);
the providers share one key file, as a vendor reusing its key pair would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forwarder.okta.keys import generate_signing_key, write_private_key
from tests.harness import harness

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ORGS = 1000
FAILING = 30


async def test_readyz_and_metrics_stay_bounded_at_1000_orgs(tmp_path: Path) -> None:
    """A summary by state plus the first 20 orgs not ok: under 64 KiB; 29 series per org."""
    async with harness(tmp_path, org_per_client=True, keep_bodies=False) as h:
        key = generate_signing_key("ES256")
        key_file = tmp_path / "vendor.jwk.json"
        write_private_key(key_file, key, force=True)
        for i in range(ORGS):
            name = f"org-{i:04d}"
            cid = h.org.register_client(name, {"keys": [key.public_jwk()]})
            if i >= FAILING:
                h.org.grant(cid)  # the first FAILING orgs never granted the scope
            h.providers.append(
                {
                    "name": name,
                    "org_url": h.org_url,
                    "client_id": cid,
                    "private_key_file": str(key_file),
                }
            )
        daemon = await h.start()
        assert daemon.keys.loads == 1  # one file, parsed once
        items = [
            {"ip": f"192.0.2.{i}", "riskLevel": "HIGH", "provider": f"org-{i:04d}"}
            for i in range(FAILING)
        ]
        status, _ = await h.post(items)
        assert status == 202
        await h.until(
            lambda: sum(d.state.status == "failing" for d in daemon.dispatchers.values()) == FAILING
        )
        async with h.session.get(f"{daemon.metrics_url}/readyz") as resp:
            raw = await resp.read()
            assert resp.status == 200
        assert len(raw) < 64 * 1024
        body = json.loads(raw)
        assert body["summary"] == {"providers": ORGS, "ok": ORGS - FAILING, "failing": FAILING}
        assert len(body["providers"]) == 20
        assert body["providers_not_listed"] == FAILING - 20
        assert all(p["state"] == "failing" and p["hint"] for p in body["providers"].values())

        async with h.session.get(f"{daemon.metrics_url}/metrics") as resp:
            text = await resp.text()
        per_org = [line for line in text.splitlines() if 'provider="org-0500"' in line]
        # 29 per org; 27 before its first token and first Okta answer (two gauges absent).
        assert len(per_org) == 27
        assert len(text.encode()) < 5 * 1024 * 1024
        assert 'forwarder_providers{state="failing"} 30.0' in text
