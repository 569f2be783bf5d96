"""Quoting for the few statements the harness writes as text (names and literals that
PostgreSQL takes no parameters for: CREATE SCHEMA, CREATE DATABASE, ALTER ROLE ...)."""

from __future__ import annotations


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
