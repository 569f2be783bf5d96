"""What a test session tells its caller: its report, and which step failed and how.

The plugin's summary and the benchmarks read `SessionReport`; a failed step's error keeps
the cause's exit code and names the command that cleans up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from cathouse_harness.errors import ConfigError, HarnessError

if TYPE_CHECKING:
    from cathouse_harness.branching.lifecycle import BranchHandle
    from cathouse_harness.config.settings import Settings

Step = Literal["backend", "parent", "template", "migrate", "fork", "teardown", "reset"]


class SessionStepError(HarnessError):
    """A step of session setup failed; names the step and how to clean up."""

    def __init__(self, step: Step, cause: BaseException, *, cleanup: str | None = None) -> None:
        self.step = step
        # a configuration problem found during setup (a refused key, a wrong service
        # order) keeps its exit code 2 through the wrapping
        self.exit_code = cause.exit_code if isinstance(cause, HarnessError) else 1
        # one_line(), not message: the cause's hint says how to fix it
        detail = cause.one_line() if isinstance(cause, HarnessError) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"cathouse-harness: {step} step failed: {detail}", hint=cleanup)


@dataclass
class SessionReport:
    backend: str = ""
    project_id: str = ""
    parent: str = ""
    template: str = ""
    template_reused: bool | None = None
    branches: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    delete_failed: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    api_calls: int = 0
    api_retries: int = 0
    migrated_services: int = 0
    # the embedded default's pooler lacks what Neon's has (`BackendInfo.pooler_gap`)
    pooler_gap: str = ""
    # "claimed": the session's branch was this machine's spare, not a fork of its own
    spare: str = ""
    # kept branch's name -> its schema diff against its parent (`diff_kept`)
    kept_diffs: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)

    def count_calls(self, client: Any) -> None:
        """The API calls and retries of `client` (a NeonClient, or None before one)."""
        stats = getattr(client, "stats", None)
        if stats is not None:
            self.api_calls = int(getattr(stats, "calls", 0))
            self.api_retries = int(getattr(stats, "retries", 0))


def root_branch_refusal(action: str, branch: str, settings: Settings) -> ConfigError:
    """A schema-only session branch (no template) is a root branch, as on Neon: there is
    no parent to restore it from (Neon restores a root only to its own history, keeping
    the current state as a new branch), and forking it would copy the session's data.
    One line naming the settings that avoid it."""
    from cathouse_harness.config.settings import ENV_NAMES

    return ConfigError(
        f"cannot {action} {branch}: a schema-only branch is a root branch, with no parent",
        key=ENV_NAMES["schema_only"], source=settings.source_of("schema_only"),
        hint="keep template_reuse on: schema-only sessions then fork from a schema-only "
        "template, which resets and per-test branches use",
    )


def teardown_error(failed: list[tuple[BranchHandle, BaseException]]) -> SessionStepError:
    """One line naming every branch left and the command that removes it."""
    handle, exc = failed[0]
    if len(failed) == 1:
        cleanup = (f"branch {handle.name} ({handle.id}) is left; remove it with: "
                   f"cathouse-branch down '{handle.name}'")
    else:
        left = ", ".join(f"{h.name} ({h.id})" for h, _ in failed)
        cleanup = f"branches {left} are left; remove each with: cathouse-branch down '<name>'"
    return SessionStepError("teardown", exc, cleanup=cleanup)
