"""Which failures are worth retrying (database or broker away) rather than dead-lettering."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from tierflow_common.exceptions import TransientError

# SQLSTATE classes: 08 connection, 53 resources, 57 operator intervention; 40001/40P01 retryable.
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "53", "57", "40001", "40P01")


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TransientError | OperationalError | InterfaceError | OSError | TimeoutError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if isinstance(code, str) and code.startswith(_TRANSIENT_SQLSTATE_PREFIXES):
            return True
    return False
