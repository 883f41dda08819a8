"""What the page routers are built from (wired once in bootstrap.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from tierflow_common.settings import TopicSettings
from tierflow_console.adapters.broker import Broker
from tierflow_console.adapters.services import Services
from tierflow_console.domain.samples import SampleWindow
from tierflow_console.entrypoints.pages import Pages
from tierflow_console.service_layer.sampler import Sampler


@dataclass(frozen=True)
class Console:
    pages: Pages
    services: Services
    broker: Broker
    topics: TopicSettings
    window: SampleWindow
    sampler: Sampler
    clock: Callable[[], datetime]
