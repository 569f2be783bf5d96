"""What the suite pins for every local server it starts (tests/conftest.py sets them), so
that subprocesses given a cleaned environment keep them: a server started without them
would pick its own PostgreSQL and host mode, and one such server makes the home's next
client refuse (a home's server runs one PostgreSQL). And no spare branch behind a run
(`CATHOUSE_SPARE`): the suite's tests count what a run leaves."""

SUITE_PINS = ("CATHOUSE_POSTGRES_BIN", "CATHOUSE_LOCAL_HOSTS", "CATHOUSE_SPARE")
