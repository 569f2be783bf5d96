"""Code every Cat House service shares: its Alembic environment, its database access
and its `/health/db` route. Each service states only what is its own (name, schema,
models, pool sizes, read_only) and hands that to one implementation here.

How a service finds this package (it is not installed; it sits beside the services):

- The apps (`<service>/app`) import it as `cathouse_common`. `app/__init__.py` appends
  this package's parent, the example's root, to `sys.path` when nothing called
  `cathouse_common` is importable yet, so `cd auth-service && uvicorn app.main:app`
  works, and so does a test that loads the `app` package under another name from its
  file. An installed `cathouse_common` (say, in a container image) wins: it comes first.
- The Alembic `env.py` files do not touch `sys.path`. They run in the harness's
  process as well as under the `alembic` command, and several services (or several
  checkouts of this example) may migrate in one process; so each `env.py` runs
  `alembic_env.py` from its own checkout by file path, afresh on every run, as it
  already does with the service's `models.py`.
"""
