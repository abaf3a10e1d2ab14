"""Okta's Risk Events output: keys, tokens (with DPoP), payload, the events call and admin calls.

Everything Okta-specific lives here, behind the dispatcher's small ``Sender`` protocol,
so a second output (SSF Security Event Tokens) can sit beside it without touching the
store, the budget or the batching.
"""
