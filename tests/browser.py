"""Debian's Chromium for the browser tests, driven by Playwright (no browser download): the
system's /usr/bin/chromium, else the copy `make browser` (scripts/install-chromium.sh) unpacks
under .tools/chromium with the libraries it brought."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

from tests.support import ROOT

# Without the background-networking flags Chromium dials Google's hosts at start, which this
# machine's closed network refuses; --no-sandbox because the tests may run as root.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium() -> tuple[str, dict[str, str | float | bool]]:
    """The browser's executable and the environment it needs to find its libraries."""
    found = subprocess.run(
        [str(ROOT / "scripts" / "install-chromium.sh")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    env: dict[str, str | float | bool] = dict(os.environ)
    if not found.startswith("/usr/bin/"):
        root = ROOT / ".tools" / "chromium" / "usr" / "lib"
        libs = sorted({p.parent for p in root.rglob("*.so*")})
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [*(str(p) for p in libs), os.environ.get("LD_LIBRARY_PATH", "")]
        ).rstrip(os.pathsep)
    return found, env


@contextmanager
def browser(downloads: Path | None = None) -> Iterator[Browser]:
    executable, env = chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable,
            args=FLAGS,
            env=env,
            headless=True,
            downloads_path=str(downloads) if downloads else None,
        )
        try:
            yield launched
        finally:
            launched.close()
