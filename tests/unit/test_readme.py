"""The README's configuration table lists every setting, with the default the code uses."""

from __future__ import annotations

import re

from pydantic_settings import BaseSettings

from tests.unit.test_classification import ROOT
from tierflow_classifier.settings import ClassifierSettings
from tierflow_common import settings as common
from tierflow_common.tracing import TracingSettings
from tierflow_console.settings import ConsoleSettings
from tierflow_ingest.settings import IngestSettings
from tierflow_notifier.settings import NotifierSettings

CLASSES: list[type[BaseSettings]] = [
    common.KafkaSettings,
    common.DatabaseSettings,
    common.TopicSettings,
    common.LogSettings,
    common.MetricsSettings,
    common.IngestHttpSettings,
    common.ClassifierHttpSettings,
    common.NotifierHttpSettings,
    common.ConsoleHttpSettings,
    common.ConsumerSettings,
    common.EmbeddedSettings,
    IngestSettings,
    ClassifierSettings,
    NotifierSettings,
    ConsoleSettings,
    TracingSettings,
]


def documented() -> dict[str, str]:
    rows = re.findall(r"^\| `([A-Z_]+)` \| (.+?) \|", (ROOT / "README.md").read_text(), re.M)
    return dict(rows)


def test_every_setting_is_in_the_readme_with_its_default() -> None:
    table = documented()
    for cls in CLASSES:
        prefix = str(cls.model_config.get("env_prefix", ""))
        for name, field in cls.model_fields.items():
            var = (prefix + name).upper()
            assert var in table, f"{var} ({cls.__name__}) missing from README configuration"
            default = field.default
            if default is None or hasattr(default, "get_secret_value"):
                continue
            if isinstance(default, float) and default.is_integer():
                default = int(default)
            shown = str(default).lower()
            assert shown in table[var].lower(), f"{var}: README says {table[var]}, code {default}"
