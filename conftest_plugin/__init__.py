"""The pytest plugin of cathouse-harness: options, fixtures and hooks over `harness`.

Registered as the pytest11 entry point `cathouse_harness`, so `pytest -p cathouse_harness`
loads it by name. It stays inert (no server, no API call) until a test asks for one of
its fixtures.
"""
