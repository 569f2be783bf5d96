"""CREATE / DROP DATABASE sent to an endpoint: recognising them in a query's text.

On Neon a branch's compute is a whole PostgreSQL, so a client may create and drop
databases over SQL. Here every branch shares one cluster, so the endpoint proxy must not
forward such a statement (it would make an unprefixed database no branch sees); it hands
it to the catalog instead (`cathouse_harness.local.branch_sql`). This module only reads text:
`classify` says whether a query is one of ours and what it asks, cheaply for the common
case (`might_be_ours`, one C-level search per query) since it runs on every query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Every statement we take over names DATABASE, and every one we check names EXTENSION
# or COLLATION; any other query is forwarded untouched after these searches. Searching
# a lower-cased copy (memchr-based `in`) measured faster than one case-folding regex for
# the single word it replaced, and three times faster for three words.

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|--[^\n]*)
    | (?P<ident>"(?:[^"]|"")*")
    | (?P<string>[eE]?'(?:[^'\\]|''|\\.)*')
    | (?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z_0-9]*)?\$)
    | (?P<word>[A-Za-z_\x80-\uffff][A-Za-z_0-9$\x80-\uffff]*)
    | (?P<number>\d+)
    | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)

# CREATE DATABASE options: these two mean something here; STRATEGY only says how
# PostgreSQL copies (we always copy files), so it is accepted and ignored.
_KEPT = frozenset({"template", "owner"})
_IGNORED = frozenset({"strategy"})


class SqlRefusal(Exception):
    """A statement answered with an ErrorResponse (its SQLSTATE and message)."""

    def __init__(self, sqlstate: str, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail


@dataclass(frozen=True)
class CreateDatabase:
    name: str
    template: str | None = None  # None: template1, an empty database
    owner: str | None = None  # None: the connecting role

    tag = "CREATE DATABASE"


@dataclass(frozen=True)
class DropDatabase:
    name: str
    if_exists: bool = False
    force: bool = False

    tag = "DROP DATABASE"


@dataclass(frozen=True)
class Refused:
    """A statement of ours that we will not run (the error to answer with)."""

    sqlstate: str
    message: str

    tag = ""


@dataclass(frozen=True)
class FeatureUse:
    """A query creating extensions or an ICU collation: forwarded, once the local
    server has checked that Neon offers them and its PostgreSQL has them
    (`cathouse_harness.local.neon_features`)."""

    extensions: tuple[str, ...] = ()
    icu: bool = False

    tag = ""


Statement = CreateDatabase | DropDatabase | Refused | FeatureUse


@dataclass(frozen=True)
class _Tok:
    kind: str  # word (lower-cased), ident (quoted, exact), string, number, punct
    text: str


def might_be_ours(text: bytes) -> bool:
    lowered = text.lower()
    return b"database" in lowered or b"extension" in lowered or b"collation" in lowered


def classify(text: str) -> Statement | None:
    """What a query string asks of us: None when it is no CREATE/DROP/ALTER DATABASE
    (forward it), else the statement, or a Refused for one we cannot run here; a
    FeatureUse when it creates extensions or an ICU collation (forward it if allowed)."""
    try:
        statements = _split(text)
    except SqlRefusal as refusal:  # an unterminated quote or comment
        return Refused(refusal.sqlstate, refusal.message) if "database" in text.lower() else None
    verbs = [_verb(tokens) for tokens in statements]
    ours = [verb for verb in verbs if verb is not None]
    if not ours:
        return _features(statements)
    if len(statements) > 1:
        return Refused(
            "0A000",
            f"{ours[0]} cannot be combined with other statements in one query string on the "
            "local server; send it on its own",
        )
    tokens = statements[0]
    try:
        if ours[0] == "CREATE DATABASE":
            return _create(tokens[2:])
        if ours[0] == "DROP DATABASE":
            return _drop(tokens[2:])
    except SqlRefusal as refusal:
        return Refused(refusal.sqlstate, refusal.message)
    return Refused(
        "0A000",
        "ALTER DATABASE is not supported by the local server's endpoints (its databases are "
        "shared by every branch); make the change on Neon or with the API",
    )


def _verb(tokens: list[_Tok]) -> str | None:
    if len(tokens) >= 2 and tokens[1] == _Tok("word", "database"):
        first = tokens[0]
        if first.kind == "word" and first.text in ("create", "drop", "alter"):
            return f"{first.text.upper()} DATABASE"
    return None


def _features(statements: list[list[_Tok]]) -> FeatureUse | None:
    """The extensions a query string creates and whether it makes an ICU collation."""
    extensions: list[str] = []
    icu = False
    for tokens in statements:
        if len(tokens) < 3 or tokens[0] != _Tok("word", "create"):
            continue
        if tokens[1] == _Tok("word", "extension"):
            rest = tokens[2:]
            if rest[:3] == [_Tok("word", "if"), _Tok("word", "not"), _Tok("word", "exists")]:
                rest = rest[3:]
            if rest and rest[0].kind in ("word", "ident", "string"):
                extensions.append(rest[0].text)
        elif tokens[1] == _Tok("word", "collation"):
            icu = icu or any(
                tokens[i] == _Tok("word", "provider")
                and tokens[i + 1] == _Tok("punct", "=")
                and tokens[i + 2].kind in ("word", "ident", "string")
                and tokens[i + 2].text.lower() == "icu"
                for i in range(2, len(tokens) - 2)
            )
    if not extensions and not icu:
        return None
    return FeatureUse(tuple(extensions), icu)


def _split(text: str) -> list[list[_Tok]]:
    """The statements of a query string as tokens (comments and blanks left out)."""
    statements: list[list[_Tok]] = []
    current: list[_Tok] = []
    pos, end = 0, len(text)
    while pos < end:
        if text.startswith("/*", pos):
            pos = _skip_block_comment(text, pos)
            continue
        match = _TOKEN.match(text, pos)
        assert match is not None  # the last alternative matches any character
        kind = match.lastgroup
        pos = match.end()
        if kind == "space":
            continue
        if kind == "dollar":
            close = text.find(match.group("dollar"), pos)
            if close < 0:
                raise SqlRefusal("42601", "unterminated dollar-quoted string")
            current.append(_Tok("string", text[pos:close]))
            pos = close + len(match.group("dollar"))
            continue
        value = match.group()
        if kind == "punct" and value == ";":
            if current:
                statements.append(current)
            current = []
            continue
        if kind == "punct" and value in "'\"":
            raise SqlRefusal("42601", "unterminated quoted string or identifier")
        current.append(_token(kind or "punct", value))
    if current:
        statements.append(current)
    return statements


def _token(kind: str, value: str) -> _Tok:
    if kind == "word":
        return _Tok("word", value.lower())
    if kind == "ident":
        return _Tok("ident", value[1:-1].replace('""', '"'))
    if kind == "string":
        return _Tok("string", value[value.index("'") + 1 : -1].replace("''", "'"))
    return _Tok(kind, value)


def _skip_block_comment(text: str, pos: int) -> int:
    """Past a /* */ comment; PostgreSQL's nest."""
    depth = 0
    while pos < len(text):
        if text.startswith("/*", pos):
            depth, pos = depth + 1, pos + 2
        elif text.startswith("*/", pos):
            depth, pos = depth - 1, pos + 2
            if depth == 0:
                return pos
        else:
            pos += 1
    raise SqlRefusal("42601", "unterminated /* comment")


def _syntax(what: str) -> SqlRefusal:
    return SqlRefusal(
        "0A000",
        f"the local server cannot read this {what} statement; see the table of what still "
        'differs in docs/embedded.md "The embedded default against Neon"',
    )


def _name(tokens: list[_Tok], pos: int, what: str) -> str:
    if pos >= len(tokens) or tokens[pos].kind not in ("word", "ident"):
        raise _syntax(what)
    return tokens[pos].text


def _create(tokens: list[_Tok]) -> CreateDatabase:
    name = _name(tokens, 0, "CREATE DATABASE")
    pos = 1
    if pos < len(tokens) and tokens[pos] == _Tok("word", "with"):
        pos += 1
    options: dict[str, str | None] = {}
    while pos < len(tokens):
        option = tokens[pos]
        if option.kind != "word":
            raise _syntax("CREATE DATABASE")
        pos += 1
        key = option.text
        if key == "connection" and pos < len(tokens) and tokens[pos] == _Tok("word", "limit"):
            key, pos = "connection limit", pos + 1
        if pos < len(tokens) and tokens[pos] == _Tok("punct", "="):
            pos += 1
        if pos >= len(tokens) or tokens[pos].kind == "punct":
            raise _syntax("CREATE DATABASE")
        value = tokens[pos]
        pos += 1
        if key not in _KEPT and key not in _IGNORED:
            raise SqlRefusal(
                "0A000",
                f"CREATE DATABASE option {key.upper()} is not supported by the local server "
                "(TEMPLATE, OWNER and STRATEGY are)",
            )
        if key in options:
            raise SqlRefusal("42601", f'option "{key}" specified more than once')
        options[key] = None if value == _Tok("word", "default") else value.text
    return CreateDatabase(name, template=options.get("template"), owner=options.get("owner"))


def _drop(tokens: list[_Tok]) -> DropDatabase:
    pos = 0
    if tokens[:2] == [_Tok("word", "if"), _Tok("word", "exists")]:
        pos = 2
    name = _name(tokens, pos, "DROP DATABASE")
    rest = tokens[pos + 1 :]
    if rest[:1] == [_Tok("word", "with")]:
        rest = rest[1:]
    force = False
    if rest:
        if rest[0] != _Tok("punct", "(") or rest[-1] != _Tok("punct", ")"):
            raise _syntax("DROP DATABASE")
        for index, token in enumerate(rest[1:-1]):
            wanted = _Tok("word", "force") if index % 2 == 0 else _Tok("punct", ",")
            if token != wanted:
                raise _syntax("DROP DATABASE")
        force = len(rest) > 2
        if not force:
            raise _syntax("DROP DATABASE")
    return DropDatabase(name, if_exists=pos == 2, force=force)
