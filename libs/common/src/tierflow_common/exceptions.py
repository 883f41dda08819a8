"""Every error raised by tierflow_common, under one base class so callers can catch the family."""


class TierflowError(Exception):
    """Base of all tierflow errors."""


class ConfigError(TierflowError):
    """A configuration file or setting is invalid; the message names the file, place and problem."""


class PoisonRecord(TierflowError):
    """A consumed record that can never be processed: dead-lettered with this reason."""

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


class BrokerUnavailable(TierflowError):
    """The Kafka broker did not acknowledge in time; the caller must not report success."""


class EmbeddedServerError(TierflowError):
    """An embedded development server (PostgreSQL or Tansu) failed to start or stop."""


class TransientError(TierflowError):
    """A failure that goes away by itself (retry the work later; never dead-letter for it)."""
