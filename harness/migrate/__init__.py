"""Internals of the ordered multi-service migration runner; `harness.migrations` is the
public entry point."""
