"""Connections to PostgreSQL go where the harness allows, and are refused before a socket
opens anywhere else.

Two callers install a policy here: a service's migration (only the branch's direct
endpoint and database, `cathouse_harness.migrate.guard`) and the pytest plugin while a
session holds a branch (`BranchOnly`: the branch's endpoints, any database on them, and
what the project names in `allow_connections`). Code under test decides where it connects
(its own settings, a `.env`), so every way of opening a PostgreSQL connection that we know
of is checked before it reaches the network:

- SQLAlchemy's `do_connect` event, for PostgreSQL dialects (any driver SQLAlchemy uses);
- asyncpg's connect (`connect_utils._connect`, which `asyncpg.connect`, a name imported
  from asyncpg before the hooks went in, and `create_pool` all reach), else `asyncpg.connect`;
- psycopg 3's connection attempts (`conninfo_attempts` / `conninfo_attempts_async`, which
  every `connect` classmethod and `psycopg.connect` call), else the `connect` entry points;
- psycopg2's `_connect` (what `psycopg2.connect` calls), else `psycopg2.connect`.

The guard is process-wide, not per thread: code may connect from a thread or an event
loop of its own. Policies stack: the innermost decides (a migration run while a session's
policy is installed checks the migration's stricter one). The hooks are in place while at
least one policy is and are removed with the last, so a process that never installs one
pays nothing; one that does pays a few microseconds per connect (reading the call's
parameters, a set lookup; benchmarks/connection_guard.py) and no import: a driver is
patched when it is imported, not imported to be patched.
"""

from __future__ import annotations

import importlib.abc
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from cathouse_harness.errors import SafetyError
from cathouse_harness.support import env
from cathouse_harness.support.redact import redact_url

DEFAULT_PORT = 5432


@dataclass(frozen=True)
class Target:
    """What a connect call names, with libpq's defaults for what it leaves out."""

    host: str  # lower-cased; several hosts (libpq, asyncpg) joined by ","
    port: str  # as given ("5432" when none); several joined by ","
    database: str
    dsn: str | None = None  # the URL or conninfo as given, for the message
    # what the call gives as password: a policy may judge it (a migration refuses
    # SQLAlchemy's mask); never shown
    password: str | None = field(default=None, repr=False, compare=False)

    def endpoints(self) -> list[tuple[str, int]]:
        """Every (host, port) the call may try; a port that is no number is -1."""
        hosts = self.host.split(",") if self.host else [""]
        ports = self.port.split(",") if self.port else [str(DEFAULT_PORT)]
        if len(ports) == 1:
            ports = ports * len(hosts)
        pairs = []
        for index, host in enumerate(hosts):
            text = ports[index] if index < len(ports) else ports[-1]
            try:
                port = int(text) if text.strip() else DEFAULT_PORT
            except ValueError:
                port = -1
            pairs.append((host.strip(), port))
        return pairs

    def describe(self) -> str:
        """The target for a person, never its password."""
        if self.dsn and "://" in self.dsn:
            return redact_url(self.dsn)
        host = self.host or "(default host)"
        return f"{host}:{self.port or DEFAULT_PORT}/{self.database or '(default database)'}"


class GuardRefusal(SafetyError):
    """A connection the installed policy does not allow; no socket was opened."""

    exit_code = 2
    attempted: str = ""


class Policy(Protocol):
    def check(self, target: Target) -> None:
        """Return when `target` is allowed; raise a `GuardRefusal` otherwise."""


# -- the stack of policies and the hooks ----------------------------------------------------

_stack_lock = threading.Lock()
_policies: list[Policy] = []
_current: Policy | None = None  # _policies[-1], read without the lock on every connect
_unhook: Callable[[], None] | None = None


def install(policy: Policy) -> None:
    """Put `policy` in force (over any already installed) until `uninstall(policy)`."""
    global _current, _unhook
    with _stack_lock:
        if not _policies:
            _unhook = _install_hooks()
        _policies.append(policy)
        _current = policy


def uninstall(policy: Policy) -> None:
    """Take `policy` out; the hooks go with the last one. Unknown policies are ignored."""
    global _current, _unhook
    with _stack_lock:
        for index in range(len(_policies) - 1, -1, -1):
            if _policies[index] is policy:
                del _policies[index]
                break
        else:
            return
        _current = _policies[-1] if _policies else None
        if not _policies and _unhook is not None:
            unhook, _unhook = _unhook, None
            unhook()


# set where connections are the harness's own (`harness_connections`); a context
# variable, so that the threads a migration runs in (started in a copy of the caller's
# context) and the tasks of a loop carry it
_harness_own: ContextVar[bool] = ContextVar("cathouse_harness_connections", default=False)


@contextmanager
def harness_connections() -> Iterator[None]:
    """What this context connects to is the harness's own doing (an xdist controller's
    broker: its forks, the workers' database copies), beside code that the tests' guard
    watches in other threads of the same process (the controller's conftests). The
    tests' guard (`BranchOnly`) lets it through; a migration's policy still judges it."""
    token = _harness_own.set(True)
    try:
        yield
    finally:
        _harness_own.reset(token)


@contextmanager
def guarded_by(policy: Policy) -> Iterator[None]:
    install(policy)
    try:
        yield
    finally:
        uninstall(policy)


def installed() -> bool:
    return _current is not None


def refused_in(exc: BaseException) -> GuardRefusal | None:
    """The refusal behind `exc` (SQLAlchemy and drivers may wrap or chain it)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, GuardRefusal):
            return current
        orig = getattr(current, "orig", None)
        if isinstance(orig, GuardRefusal):
            return orig
        current = current.__cause__ or current.__context__
    return None


# -- reading a connect call ---------------------------------------------------------------


def _check(host: Any, port: Any, database: Any, dsn: str | None = None,
           password: Any = None) -> None:
    policy = _current
    if policy is None:
        return
    # what the driver falls back to for what the call leaves out: libpq's variables, as
    # asyncpg and libpq both read them
    host = host or env.read("PGHOST")
    port = port or env.read("PGPORT")
    database = database or env.read("PGDATABASE")
    if isinstance(host, list | tuple):  # asyncpg and libpq accept several hosts
        host = ",".join(str(h) for h in host)
    if isinstance(port, list | tuple):
        port = ",".join(str(p) for p in port)
    policy.check(Target(str(host or "").lower(), str(port or ""), str(database or ""),
                        str(dsn) if dsn else None, str(password) if password else None))


def _check_url_or_params(dsn: str | None, params: dict[str, Any], *, db_key: str) -> None:
    """asyncpg-style call: a URL and/or keyword arguments (keywords win, as in asyncpg)."""
    host, port, database = params.get("host"), params.get("port"), params.get(db_key)
    password: Any = params.get("password")
    if dsn and "://" in dsn:
        parts = urlsplit(dsn)
        password = password or (unquote(parts.password) if parts.password else None)
        url_hosts, url_ports = _netloc_hosts(parts.netloc.rpartition("@")[2])
        host = host or url_hosts
        port = port or url_ports
        database = database or unquote(parts.path.lstrip("/"))
        if parts.query:  # libpq and asyncpg read these from the query too, over the rest
            query = parse_qs(parts.query)
            host = (query.get("host") or query.get("hostaddr") or [host])[-1]
            port = (query.get("port") or [port])[-1]
            database = (query.get("dbname") or query.get("database") or [database])[-1]
            password = (query.get("password") or [password])[-1]
    _check(host, port, database, dsn, password)


def _netloc_hosts(netloc: str) -> tuple[str, str]:
    """Hosts and ports of a URL's netloc; asyncpg and libpq take `h1:p1,h2:p2`."""
    hosts, ports = [], []
    for entry in netloc.split(","):
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port = entry.partition(":")
        hosts.append(unquote(host))
        ports.append(port)
    port_text = ",".join(ports) if any(ports) else ""
    return ",".join(hosts), port_text


def _check_conninfo(conninfo: str, params: dict[str, Any]) -> None:
    """libpq-style call (psycopg, psycopg2): a conninfo string or URL plus keywords."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        merged: dict[str, Any] = dict(conninfo_to_dict(conninfo or "", **params))
    except ImportError:
        if conninfo and "://" in conninfo:
            _check_url_or_params(conninfo, params, db_key="dbname")
            return
        merged = dict(_parse_keywords(conninfo or ""))
        merged.update(params)
    _check_libpq_params(merged, conninfo)


def _check_libpq_params(params: dict[str, Any], conninfo: str | None = None) -> None:
    # the socket goes to hostaddr when one is given, whatever host says
    host = params.get("hostaddr") or params.get("host")
    _check(host, params.get("port"), params.get("dbname") or params.get("database"), conninfo,
           params.get("password"))


_KEYWORD = re.compile(r"\s*(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")


def _parse_keywords(conninfo: str) -> dict[str, str]:
    """`key=value ...` as libpq reads it (for psycopg2 without psycopg installed)."""
    values = {}
    for key, value in _KEYWORD.findall(conninfo):
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        values[key] = value
    return values


def _sqlalchemy_listener(dialect: Any, conn_rec: Any, cargs: tuple[Any, ...],
                         cparams: dict[str, Any]) -> None:
    if getattr(dialect, "name", "postgresql") != "postgresql":
        return  # SQLite and friends are not PostgreSQL
    dsn = cargs[0] if cargs and isinstance(cargs[0], str) else cparams.get("dsn")
    if dsn and "://" not in str(dsn):
        _check_conninfo(str(dsn), {k: v for k, v in cparams.items() if k != "dsn"})
        return
    _check_url_or_params(dsn, cparams, db_key="dbname" if "dbname" in cparams else "database")


_LIBPQ_NON_PARAMS = frozenset({
    "connection_factory", "cursor_factory", "autocommit", "prepare_threshold", "row_factory",
    "context", "async_", "async",
})


def _asyncpg_check(dsn: str | None = None, *args: Any, **kwargs: Any) -> None:
    _check_url_or_params(dsn, kwargs, db_key="database")


def _asyncpg_inner_check(*args: Any, **kwargs: Any) -> None:
    _check_url_or_params(kwargs.get("dsn"), kwargs, db_key="database")


def _libpq_check(conninfo: str | None = None, *args: Any, **kwargs: Any) -> None:
    params = {k: v for k, v in kwargs.items() if k not in _LIBPQ_NON_PARAMS}
    _check_conninfo(conninfo or "", params)


def _psycopg2_inner_check(dsn: str | None = None, *args: Any, **kwargs: Any) -> None:
    _check_conninfo(dsn or "", {})  # psycopg2.connect already merged its keywords into dsn


def _attempts_check(params: dict[str, Any], *args: Any, **kwargs: Any) -> None:
    _check_libpq_params(dict(params))


def _wrap(check: Callable[..., None], original: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        check(*args, **kwargs)
        return original(*args, **kwargs)

    guarded.__wrapped__ = original  # type: ignore[attr-defined]
    return guarded


def _wrap_async(check: Callable[..., None], original: Callable[..., Any]) -> Callable[..., Any]:
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        check(*args, **kwargs)
        return await original(*args, **kwargs)

    guarded.__wrapped__ = original  # type: ignore[attr-defined]
    return guarded


# Where to hook, per driver: the first (module, attribute, check, is async) of each group
# whose module is loaded and has the attribute. The deep points come first: a name
# imported before the hooks went in (`from asyncpg import connect`) still reaches them.
# The public ones serve driver versions without them.
_Hook = tuple[str, str, Callable[..., None], bool]
_HOOKS: tuple[tuple[_Hook, ...], ...] = (
    (("asyncpg.connect_utils", "_connect", _asyncpg_inner_check, True),
     ("asyncpg.connection", "connect", _asyncpg_check, True)),
    (("psycopg.connection", "conninfo_attempts", _attempts_check, False),
     ("psycopg", "connect", _libpq_check, False)),
    (("psycopg.connection_async", "conninfo_attempts_async", _attempts_check, True),),
    (("psycopg2", "_connect", _psycopg2_inner_check, False),
     ("psycopg2", "connect", _libpq_check, False)),
)
_SQLALCHEMY = "sqlalchemy"


class _Hooks(importlib.abc.MetaPathFinder):
    """The patches in force. A driver already imported is patched at once; one imported
    later, the moment its module has loaded (this finder hands the import system a loader
    that patches after executing it). Importing the drivers to patch them would cost a
    session that uses none of them about a second (asyncpg, psycopg, psycopg2 and
    SQLAlchemy, measured with `python -X importtime`)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._patched: list[tuple[Any, str, Any]] = []
        self._done: set[int] = set()  # indexes of _HOOKS' groups in force
        self._listening = False
        self._watched = {hook[0] for group in _HOOKS for hook in group} | {_SQLALCHEMY}

    def start(self) -> None:
        self.patch_loaded()
        sys.meta_path.insert(0, self)

    def stop(self) -> None:
        with self._lock:
            with suppress(ValueError):
                sys.meta_path.remove(self)
            for owner, attribute, original in reversed(self._patched):
                setattr(owner, attribute, original)
            self._patched.clear()
            if self._listening:
                from sqlalchemy import event
                from sqlalchemy.engine import Engine

                event.remove(Engine, "do_connect", _sqlalchemy_listener)
                self._listening = False

    def patch_loaded(self) -> None:
        """Patch what is loaded and not yet patched."""
        with self._lock:
            for index, group in enumerate(_HOOKS):
                if index in self._done:
                    continue
                for module_name, attribute, check, is_async in group:
                    module = sys.modules.get(module_name)
                    original = getattr(module, attribute, None) if module is not None else None
                    if original is None:
                        continue
                    wrapper = _wrap_async if is_async else _wrap
                    setattr(module, attribute, wrapper(check, original))
                    self._patched.append((module, attribute, original))
                    self._done.add(index)
                    break
            if not self._listening and _SQLALCHEMY in sys.modules:
                from sqlalchemy import event
                from sqlalchemy.engine import Engine

                event.listen(Engine, "do_connect", _sqlalchemy_listener)
                self._listening = True

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> ModuleSpec | None:
        if fullname not in self._watched:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PatchAfterLoading(spec.loader, self)
        return spec


class _PatchAfterLoading(importlib.abc.Loader):
    """A module's own loader, then the patches."""

    def __init__(self, inner: Any, hooks: _Hooks) -> None:
        self._inner = inner
        self._hooks = hooks

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        created: ModuleType | None = self._inner.create_module(spec)
        return created

    def exec_module(self, module: ModuleType) -> None:
        # the module keeps its real loader (resources, reload), as if we had not been here
        if module.__spec__ is not None:
            module.__spec__.loader = self._inner
        module.__loader__ = self._inner
        self._inner.exec_module(module)
        self._hooks.patch_loaded()


def _install_hooks() -> Callable[[], None]:
    """Hook the drivers and SQLAlchemy (now or when imported); returns what undoes it."""
    hooks = _Hooks()
    hooks.start()
    return hooks.stop


# -- the test session's policy ------------------------------------------------------------


@dataclass(frozen=True)
class AllowedTarget:
    """One `allow_connections` entry: a host, and a port and a database when it names them."""

    host: str
    port: int | None
    database: str | None
    text: str

    def permits(self, host: str, port: int, database: str) -> bool:
        return (host == self.host and (self.port is None or port == self.port)
                and (self.database is None or database == self.database))


def parse_allowed(text: str) -> AllowedTarget:
    """`postgresql://[user@]host[:port][/db]` or `host[:port][/db]`; ValueError saying why."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("an entry is empty or not a string")
    raw = text.strip()
    if "://" in raw:
        scheme = raw.split("://", 1)[0].lower()
        if not scheme.startswith("postgres"):
            raise ValueError(f"{raw!r} is not a PostgreSQL URL")
        rest = raw.split("://", 1)[1]
    else:
        rest = raw
    try:
        parts = urlsplit("//" + rest)
        port = parts.port
    except ValueError:
        raise ValueError(f"{redact_url(raw)!r} has a port that is not a number") from None
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError(f"{redact_url(raw)!r} names no host")
    if parts.query or parts.fragment or parts.path.count("/") > 1:
        raise ValueError(f"{redact_url(raw)!r} is not host[:port][/database]")
    database = unquote(parts.path.lstrip("/")) or None
    return AllowedTarget(host, port, database, redact_url(raw))


class NotTheBranch(GuardRefusal):
    """Code under test tried to connect to a PostgreSQL that is not the session's branch."""


# what a refusal tells a person to do
FIX = ("map the project's own variables onto the branch in [tool.cathouse_harness.env], "
       "or name this target in allow_connections if the test means it; README 'Only the "
       "branch is reachable'")


class BranchOnly:
    """The test session's policy: the branch's endpoints (direct and pooled, any database
    on them) and the `allowed` targets; everything else is refused and remembered, so a
    test that catches the error still fails (`take_refusals`)."""

    def __init__(self, endpoints: Iterable[tuple[str, int]], allowed: Iterable[AllowedTarget] = (),
                 *, who: Callable[[], str] = lambda: "outside any test",
                 env_file: Path | None = None) -> None:
        self._endpoints: dict[tuple[str, int], int] = {}
        for endpoint in endpoints:
            self.add_endpoint(endpoint)
        self._allowed = tuple(allowed)
        self._who = who
        self._env_file = env_file
        self._refusals: list[NotTheBranch] = []
        self._refusals_lock = threading.Lock()

    def add_endpoint(self, endpoint: tuple[str, int]) -> None:
        """Allow one more endpoint (a branch forked for a single test) until removed."""
        key = (endpoint[0].lower(), int(endpoint[1]))
        self._endpoints[key] = self._endpoints.get(key, 0) + 1

    def remove_endpoint(self, endpoint: tuple[str, int]) -> None:
        key = (endpoint[0].lower(), int(endpoint[1]))
        left = self._endpoints.get(key, 0) - 1
        if left > 0:
            self._endpoints[key] = left
        else:
            self._endpoints.pop(key, None)

    def check(self, target: Target) -> None:
        if _harness_own.get():
            return
        for host, port in target.endpoints():
            if (host, port) in self._endpoints:
                continue
            if any(a.permits(host, port, target.database) for a in self._allowed):
                continue
            refusal = self._refusal(target)
            with self._refusals_lock:
                self._refusals.append(refusal)
            raise refusal

    def _refusal(self, target: Target) -> NotTheBranch:
        held = where_named(target, self._env_file)
        where = f" ({held})" if held else ""
        error = NotTheBranch(
            f"{self._who()}: connection to {target.describe()}{where} refused before it "
            "opened: it is not this session's branch",
            hint=FIX,
        )
        error.attempted = target.describe()
        return error

    def take_refusals(self) -> list[NotTheBranch]:
        """The refusals since the last call, oldest first."""
        with self._refusals_lock:
            taken, self._refusals = self._refusals, []
        return taken


def where_named(target: Target, env_file: Path | None = None) -> str | None:
    """Which environment variable or `.env` entry holds `target` ("environment NAME",
    "<path> NAME", as settings name their sources): a URL naming its host and port, or
    (settings spelled in parts) a variable holding the host beside one holding the port.
    Runs on a refusal only."""
    pairs = target.endpoints()
    if not pairs:
        return None
    host, port = pairs[0]
    # every variable, not names of ours: which of the project's own holds the target is
    # what we are looking for (so not through support.env's table)
    places: list[tuple[str, dict[str, str]]] = [("environment", dict(os.environ))]
    if env_file is not None and env_file.is_file():
        try:
            from dotenv import dotenv_values

            values = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
        except (OSError, UnicodeDecodeError, ImportError):
            values = {}
        places.append((str(env_file), values))
    host_only: str | None = None
    for label, values in places:
        for name, value in values.items():
            if "://" in value and _url_names(value, host, port):
                return f"{label} {name}"
        host_names = [n for n, v in values.items() if host and v.strip().lower() == host]
        port_names = [n for n, v in values.items() if v.strip() == str(port)]
        if host_names and port_names:
            return f"{label} {host_names[0]}/{port_names[0]}"
        if host_names and host_only is None:
            host_only = f"{label} {host_names[0]}"
    return host_only


def _url_names(value: str, host: str, port: int) -> bool:
    try:
        parts = urlsplit(value.strip())
        return (parts.hostname or "").lower() == host and (parts.port or DEFAULT_PORT) == port
    except ValueError:
        return False
