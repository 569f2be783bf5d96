"""Internals of the ordered multi-service migration runner; `cathouse_harness.migrate.all_services` is the
public entry point."""
