"""The annotation keys the harness writes on every branch it creates (Neon's
`annotation_value`): what makes a branch ours, whose run and owner it is, what kind.

The engine decides by them what it may touch (`branching.lifecycle.ensure_owned`); the
embedded default reads the kind only to keep its server up while a developer's branch
lives. Both read this one vocabulary.
"""

MARK = "cathouse-harness"
MARK_RUN = "cathouse-harness.run"
MARK_KIND = "cathouse-harness.kind"
MARK_FINGERPRINT = "cathouse-harness.fingerprint"
MARK_HOST = "cathouse-harness.host"
MARK_PID = "cathouse-harness.pid"
# Who may delete the branch by looking it up: the process (an xdist run: its controller
# and workers) that created it. Two runs given the same run id have different tokens.
MARK_OWNER = "cathouse-harness.owner"
# The branch a schema-only branch was made from: as on Neon, it is a root branch and its
# `parent_id` is empty, so the link the harness needs (whose template it is) lives here.
MARK_PARENT = "cathouse-harness.parent"
