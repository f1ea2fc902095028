"""The error hierarchy. Permanent errors are the user's to fix; temporary ones are retried."""

from __future__ import annotations

from dataclasses import dataclass


class MlcdError(Exception):
    """Root of every error mlcd raises on purpose."""


@dataclass(frozen=True)
class FieldProblem:
    """One thing wrong with a spec: where (``spec.tuning.maxTrials``) and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class PermanentError(MlcdError):
    """A condition only a change by the user can fix (a missing secret, a bad dataset URI)."""


class SpecError(PermanentError):
    """The spec is invalid. Permanent: retrying cannot help."""

    def __init__(self, problems: list[FieldProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class TemporaryError(MlcdError):
    """A backend is unreachable or busy; the same call may succeed later."""

    def __init__(self, message: str, delay: float = 10.0) -> None:
        super().__init__(message)
        self.delay = delay


class StoreUnavailable(TemporaryError):
    """The artifact or dataset store did not answer."""


class VersionExists(MlcdError):
    """A model version is immutable; writing it twice is refused."""


class StageFailed(MlcdError):
    """A stage of a run failed; the run ends ``failed`` with this message as its reason."""
