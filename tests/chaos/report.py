"""`python -m tests.chaos.report var/chaos/<run>.json [more.json ...] docs/reliability.md`: the
runs' results as the table between the markers of docs/reliability.md (run by `make chaos`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

BEGIN = "<!-- chaos-table -->"
END = "<!-- /chaos-table -->"
COLUMNS = (
    ("name", "scenario"),
    ("acknowledged", "acknowledged"),
    ("faults", "faults"),
    ("lost", "lost"),
    ("counted_twice", "counted twice"),
    ("duplicate_changes", "duplicate changes"),
    ("reordered", "reordered"),
    ("gaps", "gaps"),
    ("offset_regressions", "offsets back"),
    ("fenced_writes", "fenced writes"),
    ("dead_lettered_expected", "dead-lettered (expected)"),
    ("dead_lettered_unexpected", "dead-lettered (unexpected)"),
    ("actions_delivered", "care actions delivered"),
    ("duplicate_actions", "duplicate actions"),
    ("missing_actions", "missing actions"),
    ("redeliveries", "same-id redeliveries"),
    ("recovery_s", "recovery s"),
    ("events_per_s", "events/s"),
    ("peak_rss_mib", "ingest peak RSS MiB"),
    ("passed", "passed"),
)


def table(reports: list[dict[str, Any]]) -> str:
    runs = ", ".join(f"`{r['run']}`" for r in reports)
    lines = [
        f"Run {runs}:",
        "",
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for report in reports:
        for scenario in report["scenarios"]:
            lines.append("| " + " | ".join(_cell(scenario.get(k)) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    """A figure a scenario does not measure (None: no notifiers, no RSS sampling) is blank."""
    return "" if value is None else str(value)


def main(results: list[Path], doc: Path) -> None:
    found = [json.loads(p.read_text()) for p in results if p.exists()]
    if not found:
        print(f"{' '.join(map(str, results))}: no results (no scenario finished)", file=sys.stderr)
        return
    text = doc.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{table(found)}\n{END}{tail}")


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:-1]], Path(sys.argv[-1]))
