"""What the local server simulates of Neon beyond PostgreSQL: injected faults, Neon's
latencies, the extensions Neon offers."""
