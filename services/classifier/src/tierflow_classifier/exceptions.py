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


class UnknownRuleSet(ClassifierError):
    """No rule-set version with that id is stored."""

    def __init__(self, version: str) -> None:
        super().__init__(f"no rule set with version {version!r}")
        self.version = version


class ActiveRuleSetMoved(ClassifierError):
    """An activation expected another version to be active (someone activated meanwhile)."""

    def __init__(self, expected: str, active: str | None) -> None:
        super().__init__(
            f"the active rule set is {active!r}, not {expected!r}: read it again and decide"
        )
        self.expected, self.active = expected, active
