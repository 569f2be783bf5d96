"""Talking to a branch's databases: URL forms, quoting, service engines, rolled-back sessions."""
