"""The PostgreSQL store: several replicas share one database, its clock and its locks.

Modules: ``dsn`` (checking and redacting the DSN; pure), ``schema`` (migrations under an
advisory lock), ``connect`` (the pool), ``owners`` (provider leases with fencing epochs,
replica heartbeats, the budget slot reserved under the epoch), ``balance`` (how many
providers each live replica should own; pure), ``coordinator`` (the loop that keeps
leases renewed and spread).
"""
