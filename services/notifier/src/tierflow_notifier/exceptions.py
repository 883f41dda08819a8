"""Errors of the notifier."""

from tierflow_common.exceptions import TierflowError


class NotifierError(TierflowError):
    """Base of notifier errors."""
