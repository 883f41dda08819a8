"""Errors of the classifier."""

from tierflow_common.exceptions import TierflowError


class ClassifierError(TierflowError):
    """Base of classifier errors."""


class UnprocessableEvent(ClassifierError):
    """A schema-valid event the domain cannot apply (dead-lettered with this reason)."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
