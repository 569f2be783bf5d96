"""A PostgreSQL instance per branch, as Neon runs a compute per branch (#24).

Each branch gets a data directory and a postmaster of its own, run by the home's OS user
and reachable only through a unix socket in a 0700 directory; a fork copies a parent's
data directory (stopped) or takes a consistent copy through PostgreSQL's backup
functions (running); `pooler` puts a PgBouncer of its own in front of a running one.
The local server's data plane (`cathouse_harness.local.instance_plane`) is built on it;
ARCHITECTURE.md, "Compute per branch", says what comes next.
"""
