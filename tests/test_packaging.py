"""A wheel, installed as a container image would install it (not editable), runs on its own.

The wheel is built from a copy of the repository (the checkout stays clean) and installed with
``--no-deps`` into a fresh venv; the dependencies come from the test environment's site-packages
through a ``.pth`` line, which adds the folder to the path without running its ``.pth`` files, so
the checkout's editable install cannot stand in for the wheel.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_IGNORED = shutil.ignore_patterns(".venv", ".git", "outbox", "build", "dist", "*.egg-info", "__pycache__", ".*cache")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin folder of a fresh venv holding the project's wheel."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=_IGNORED)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source), "-w", str(work / "dist")],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = (work / "dist").glob("renewal_worker-*.whl")
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True, timeout=300
    )
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "_renewal_worker_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env_dir / "bin"


@pytest.mark.integration
def test_the_installed_wheel_imports_its_own_copy_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [installed / "python", "-c", "import worker; print(worker.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert not Path(proc.stdout.strip()).is_relative_to(ROOT)


@pytest.mark.integration
def test_renewals_demo_runs_from_an_empty_folder_on_the_packaged_rules_templates_and_examples(
    installed: Path, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [installed / "renewals", "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(installed), "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "first-notice" in proc.stdout
    emails = sorted((tmp_path / "outbox").glob("*.eml"))
    assert len(emails) >= 3
    assert "X-Renewal-Reminder:" in emails[0].read_text()


@pytest.mark.integration
def test_the_installed_rules_check_uses_the_packaged_rules_and_templates(installed: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [installed / "renewals", "rules", "check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(installed), "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "bundled" in proc.stdout + proc.stderr
