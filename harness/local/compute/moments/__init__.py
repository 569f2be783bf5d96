"""An instance at another moment than its own now: hot standbys (read-only endpoints,
time-travel connections), bases and their WAL replayed to a time or an LSN, and the
schema-only copy. The instance data plane's history (ARCHITECTURE.md, "Read-only
endpoints, points in time, schema-only")."""
