"""The keys of the PostgreSQL advisory locks this server takes, in one place: they share one
64-bit namespace per database, so a new key is added here, next to the others.

``WRITE_LOCK`` serialises the write transactions (database.py), ``MIGRATE_LOCK`` the schema steps
of opening a store (schema.py), ``LIVE_LOCK`` the live event log's appends and ``LEASE_LOCK`` the
import/migrate lease (database.py's ``OWN_LOCKS``).
"""

WRITE_LOCK = 0x616D_0001
MIGRATE_LOCK = 0x616D_0002
LIVE_LOCK = 0x616D_0003
# The import/migrate lease (memory/transfer_lease.py): refreshed while a long import's transaction
# holds the write lock.
LEASE_LOCK = 0x616D_0004
