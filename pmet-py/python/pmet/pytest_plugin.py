"""pytest plugin: each test's resource use, and budgets that fail a test.

``pytest --pmet`` follows the pytest process and everything it starts, and
records for each test what it used, its subprocesses included: CPU seconds,
the tree's peak resident memory (as sampled, every 100 ms), bytes sent and
received on the network (exact, with eBPF), processes started and those
that failed. ``--pmet-report FILE`` writes them as JSON, one entry per test.

``@pytest.mark.pmet_budget(cpu="2s", rss="500MiB", net_tx="1MiB",
net_rx="1MiB", processes=10, failed=0)`` fails a test that goes over, with a
message naming the figure. Without root (the procfs backend), network
budgets cannot be checked: they are left out, with a warning saying why.
pmet's own sampling runs in the pytest process and counts in its CPU (a few
milliseconds a second).
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections.abc import Generator
from typing import Any

import pytest

import pmet

_KEY = pytest.StashKey["_Recorder"]()

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_TIME_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "m": 60.0, "min": 60.0, "h": 3600.0}
_BUDGETS = ("cpu", "rss", "net_tx", "net_rx", "processes", "failed")


class PmetBudgetWarning(pytest.PytestWarning):
    """A budget that could not be checked (and why)."""


def _amount(key: str, value: object) -> float:
    """A budget's value in seconds, bytes or a count."""
    if isinstance(value, bool):
        raise ValueError(f"pmet_budget {key}={value!r}: give a number or a string")
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"pmet_budget {key}={value!r}: give a number or a string")
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", value)
    units = _TIME_UNITS if key == "cpu" else _SIZE_UNITS if key in ("rss", "net_tx", "net_rx") else {"": 1}
    if not m or m.group(2).lower() not in units:
        raise ValueError(
            f"pmet_budget {key}={value!r}: not a {'duration' if key == 'cpu' else 'size' if key != 'processes' and key != 'failed' else 'count'}"
            f" pmet can read (e.g. {'2s, 500ms' if key == 'cpu' else '500MiB, 1MB' if key not in ('processes', 'failed') else '10'})"
        )
    return float(m.group(1)) * units[m.group(2).lower()]


def _shown(key: str, v: float) -> str:
    if key == "cpu":
        return f"{v:.3f} s"
    if key in ("rss", "net_tx", "net_rx"):
        for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
            if v >= size:
                return f"{v / size:.1f} {unit} ({int(v)} bytes)"
        return f"{int(v)} bytes"
    return str(int(v))


class _Recorder:
    def __init__(self, config: pytest.Config) -> None:
        self.path = config.getoption("pmet_report")
        self.monitor = pmet.ProcessMonitor.from_pid(
            os.getpid(), base_interval_ms=100, max_interval_ms=100
        )
        self.tests: list[dict[str, Any]] = []

    @property
    def has_net(self) -> bool:
        return self.monitor.backend == "ebpf"

    def begin(self) -> tuple[pmet.Sample, float]:
        """The tree as a test starts."""
        m = self.monitor
        while m._core.next_sample(0) is not None:  # what came before the test
            pass
        return m.sample_once(), time.monotonic()

    def end(self, item: pytest.Item, start: tuple[pmet.Sample, float]) -> dict[str, Any]:
        """What the test used since `begin`, recorded."""
        before, t0 = start
        m = self.monitor
        after = m.sample_once()
        # The tree's peak over the samples taken during the test.
        peak = max(before.rss_bytes, after.rss_bytes)
        while (text := m._core.next_sample(0)) is not None:
            peak = max(peak, pmet.Sample(text).rss_bytes)

        def moved(s: pmet.Sample, way: str) -> int | None:
            if s.net is None:
                return None
            return int(getattr(s.net.tcp, way) + getattr(s.net.udp, way))

        tx0, tx1 = moved(before, "tx_bytes"), moved(after, "tx_bytes")
        rx0, rx1 = moved(before, "rx_bytes"), moved(after, "rx_bytes")
        entry: dict[str, Any] = {
            "nodeid": item.nodeid,
            "duration_s": round(time.monotonic() - t0, 6),
            "cpu_s": round(after.cpu_s - before.cpu_s, 6),
            "peak_rss_bytes": peak,
            "net_tx_bytes": None if tx0 is None or tx1 is None else tx1 - tx0,
            "net_rx_bytes": None if rx0 is None or rx1 is None else rx1 - rx0,
            "processes": after.seen - before.seen,
            "failed_processes": after.failed - before.failed,
        }
        self.tests.append(entry)
        return entry

    def finish(self) -> None:
        report = self.monitor.stop()
        if self.path:
            with open(self.path, "w", encoding="utf-8") as f:
                json.dump(
                    {
                        "schema": "pmet.pytest.v1",
                        "backend": self.monitor.backend,
                        "lost_events": report.collector.lost_events,
                        "tests": self.tests,
                    },
                    f,
                    indent=1,
                )
                f.write("\n")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pmet", "resource use per test (pmet)")
    group.addoption(
        "--pmet",
        action="store_true",
        help="record each test's CPU, peak memory, network bytes and processes, "
        "its subprocesses included, and check @pytest.mark.pmet_budget",
    )
    group.addoption(
        "--pmet-report",
        metavar="FILE",
        help="with --pmet, write each test's figures to FILE (JSON)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "pmet_budget(cpu=None, rss=None, net_tx=None, net_rx=None, processes=None, failed=None): "
        "fail the test when it (with its subprocesses) uses more; checked with --pmet",
    )
    if config.getoption("pmet_report") and not config.getoption("pmet"):
        raise pytest.UsageError("--pmet-report FILE goes with --pmet")
    if config.getoption("pmet"):
        config.stash[_KEY] = _Recorder(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    rec = config.stash.get(_KEY, None)
    if rec is not None:
        rec.finish()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    rec = item.config.stash.get(_KEY, None)
    if rec is None:
        return (yield)
    budget: dict[str, float] = {}
    for mark in item.iter_markers("pmet_budget"):
        if mark.args:
            raise pytest.UsageError("pmet_budget takes keywords only, e.g. pmet_budget(cpu='2s')")
        for key, value in mark.kwargs.items():
            if key not in _BUDGETS:
                raise pytest.UsageError(
                    f"pmet_budget {key}=...: unknown figure; use {', '.join(_BUDGETS)}"
                )
            budget.setdefault(key, _amount(key, value))
    start = rec.begin()
    try:
        result = yield
    finally:
        entry = rec.end(item, start)
    figures = {
        "cpu": entry["cpu_s"],
        "rss": entry["peak_rss_bytes"],
        "net_tx": entry["net_tx_bytes"],
        "net_rx": entry["net_rx_bytes"],
        "processes": entry["processes"],
        "failed": entry["failed_processes"],
    }
    over = []
    for key, limit in budget.items():
        used = figures[key]
        if used is None:
            item.warn(
                PmetBudgetWarning(
                    f"pmet_budget {key} not checked: the {rec.monitor.backend} backend cannot see "
                    "network traffic (run pytest as root for eBPF)"
                )
            )
            continue
        if used > limit:
            over.append(f"{key} {_shown(key, used)} > budget {_shown(key, limit)}")
    if over:
        pytest.fail("pmet budget exceeded: " + "; ".join(over), pytrace=False)
    return result


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    rec = config.stash.get(_KEY, None)
    if rec is None:
        return
    tr = terminalreporter
    tr.section("pmet")
    tr.write_line(f"backend: {rec.monitor.backend}; {len(rec.tests)} tests measured")
    top = sorted(rec.tests, key=lambda t: t["cpu_s"], reverse=True)[:5]
    for t in top:
        net = (
            "net n/a"
            if t["net_tx_bytes"] is None
            else f"net tx {t['net_tx_bytes']} B rx {t['net_rx_bytes']} B"
        )
        tr.write_line(
            f"{t['cpu_s']:8.3f} s cpu  {t['peak_rss_bytes'] / 2**20:7.1f} MiB  {net}  "
            f"{t['processes']} processes  {t['nodeid']}"
        )
    if rec.path:
        tr.write_line(f"figures written to {rec.path}")


warnings.filterwarnings("default", category=PmetBudgetWarning)
