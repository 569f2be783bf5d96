"""The network side of the data plane: an endpoint's listeners, TLS, startup and SCRAM, the
byte relay, names and addresses, PgBouncer, pg_dump."""
