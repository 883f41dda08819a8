"""npm packages the tests run (implementations we did not write: the AsyncAPI parser, the
CloudEvents JavaScript SDK), each installed from its own lock file into its own folder under
tests/ — never globally — and again only when the lock file changed."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path


def installed_node(folder: Path, what: str) -> str:
    """The `node` executable, with `folder`'s package-lock.json installed (`npm ci`)."""
    npm, node = shutil.which("npm"), shutil.which("node")
    assert npm, f"npm is needed to install {what}"
    assert node, f"node is needed to run {what}"
    installed = folder / "node_modules" / ".package-lock.json"
    lock = folder / "package-lock.json"
    # `make test` runs the tests in two processes (pytest-xdist): one installs, the other waits
    # for it instead of running a second `npm ci` into the same folder.
    with (folder / ".npm-install.lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
            subprocess.run(
                [npm, "ci", "--prefix", str(folder), "--ignore-scripts", "--no-audit", "--no-fund"],
                check=True,
                capture_output=True,
                timeout=240,
            )
    return node
