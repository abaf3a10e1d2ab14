"""Provisioning an Okta org as a third-party risk provider, without Postman or websites.

The steps of Okta's guide (risk-api.md §7):

1. a signing key pair, written locally (the private key never leaves this machine, and
   an existing one is never overwritten without ``force``): :mod:`.keyfiles`;
2. a service app registered with the public JWK (``private_key_jwt``);
3. the ``okta.riskEvents.manage`` scope granted to it (an existing grant is success) and
4. a risk provider pointing at the app (an org holds at most three): :mod:`.org`;
5. proof: a token fetched with the key (DPoP when the app requires it), and optionally one
   harmless test event: :mod:`.check`; then its ``security.risk.signal.consume`` in the
   System Log: :mod:`.confirm`.

No printing here: functions return results, and raise :class:`ProvisionError` for an
input the operator must change or :class:`~forwarder.errors.AdminApiError` when the org
says no (with Okta's error body and a hint).
"""

from __future__ import annotations

from forwarder.okta.provision.check import (
    TEST_EVENT_IP,
    TEST_EVENT_MESSAGE,
    CheckFailed,
    CheckResult,
    Confirm,
    check_provider,
    connectivity_signal,
)
from forwarder.okta.provision.errors import ProvisionError
from forwarder.okta.provision.keyfiles import KeyPair, load_public_jwk, write_key_pair
from forwarder.okta.provision.org import (
    MAX_PROVIDERS,
    PROVIDER_ACTIONS,
    GrantResult,
    ProviderChange,
    check_provider_name,
    choose_provider,
    describe_provider,
    ensure_scope_granted,
    is_unconfigured,
    list_providers,
    providers_block,
    set_provider,
)

__all__ = [
    "MAX_PROVIDERS",
    "PROVIDER_ACTIONS",
    "TEST_EVENT_IP",
    "TEST_EVENT_MESSAGE",
    "CheckFailed",
    "CheckResult",
    "Confirm",
    "GrantResult",
    "KeyPair",
    "ProviderChange",
    "ProvisionError",
    "check_provider",
    "check_provider_name",
    "choose_provider",
    "connectivity_signal",
    "describe_provider",
    "ensure_scope_granted",
    "is_unconfigured",
    "list_providers",
    "load_public_jwk",
    "providers_block",
    "set_provider",
    "write_key_pair",
]
