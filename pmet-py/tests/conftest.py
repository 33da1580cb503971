"""Shared helpers for the Python package's tests.

The suite runs twice under ``cargo xtask test``: as root (eBPF; every test
not marked ``unprivileged``) and as an ordinary user through setpriv (the
procfs backend; the tests marked ``unprivileged``). A test meant for the
other run is deselected there, never skipped in silence.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = os.geteuid() == 0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unprivileged: runs as an ordinary user (procfs backend)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Each test runs in the run it is written for: as root, the eBPF tests;
    # as a user, those marked `unprivileged`.
    keep, drop = [], []
    for item in items:
        wants_user = item.get_closest_marker("unprivileged") is not None
        (keep if wants_user != ROOT else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def script(tmp_path: Path):
    """Writes a Python script and returns the command that runs it."""

    def make(body: str, name: str = "work.py") -> list[str]:
        path = tmp_path / name
        path.write_text(textwrap.dedent(body))
        return [sys.executable, str(path)]

    return make


def run_pytest(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """pytest in a subprocess, as this interpreter runs it."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
