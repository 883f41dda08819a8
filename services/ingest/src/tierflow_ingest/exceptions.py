"""Errors of the ingest service."""

from tierflow_common.exceptions import TierflowError


class IngestError(TierflowError):
    """Base of ingest errors."""


class Overloaded(IngestError):
    """Too many events are waiting for broker acknowledgement; the client should retry later."""
