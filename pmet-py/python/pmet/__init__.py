"""pmet: what a command and its whole process tree used.

Every process the command started (even one that lived a millisecond), each
one's CPU, memory, disk I/O and threads, and its network traffic per
process, TCP and UDP, to the byte: from pmet's kernel programs (eBPF) when
this process may load them (root, or CAP_BPF and CAP_PERFMON), else from
/proc polling, where what polling cannot know (network) is ``None``.

    >>> import pmet
    >>> report = pmet.trace(["python3", "-c", "print('hi')"])
    >>> report.exit_code, report.totals.processes
    (0, 1)

``ProcessMonitor`` is the same session, driven step by step; ``load_report``
and ``diff`` read and compare reports as ``pmet report`` and ``pmet diff``
do. Reports are the CLI's: ``report.write(path)`` writes what
``pmet trace -o`` would.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from . import _core
from ._core import PmetError
from ._objects import (
    Collector,
    Connection,
    Diff,
    GpuCollector,
    GpuDevice,
    GpuNow,
    GpuTotals,
    GpuUse,
    Lost,
    MetricChange,
    Net,
    ProcessReport,
    ProcessSample,
    Rate,
    Record,
    Report,
    Sample,
    Totals,
    Traffic,
    Verdict,
)

__version__: str = _core.__version__

__all__ = [
    "Collector",
    "Connection",
    "Diff",
    "GpuCollector",
    "GpuDevice",
    "GpuNow",
    "GpuTotals",
    "GpuUse",
    "Lost",
    "MetricChange",
    "Net",
    "PmetError",
    "ProcessMonitor",
    "ProcessReport",
    "ProcessSample",
    "Rate",
    "Record",
    "Report",
    "Sample",
    "Totals",
    "Traffic",
    "Verdict",
    "diff",
    "load_report",
    "trace",
]

_BACKENDS = ("auto", "ebpf", "procfs")
#: How often a blocking call comes back to Python (for Ctrl+C and callbacks).
_POLL_S = 0.05
#: How long the tree has after SIGTERM before SIGKILL (``stop``).
_TERM_GRACE_S = 4.5


def _interval(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number of milliseconds, not {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be at least 1 ms, not {value}")
    return value


class ProcessMonitor:
    """Follows a command's whole process tree (or a running process's) from
    the moment it is created until the tree ends.

    The command is started at once, held until pmet follows it, so nothing
    it does is missed; ``run()`` waits for the end and returns the report.
    Samples are taken every ``base_interval_ms`` at first, backing off to
    ``max_interval_ms`` while the tree is steady.

    ``backend``: ``"auto"`` (eBPF when this process may load it, else /proc
    polling), ``"ebpf"`` (``PermissionError`` naming what is missing when it
    may not) or ``"procfs"``. ``env`` replaces the command's environment and
    ``cwd`` its directory, as for ``subprocess``.

    Used as a context manager, the tree is stopped (SIGTERM, then SIGKILL 5 s
    later for what ignores it) if still running on the way out.
    """

    def __init__(
        self,
        cmd: Sequence[str | os.PathLike[str]],
        *,
        base_interval_ms: int = 1000,
        max_interval_ms: int = 5000,
        include_children: bool = True,
        since_process_start: bool = False,
        backend: str = "auto",
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        if isinstance(cmd, (str, bytes)) or not isinstance(cmd, Sequence):
            raise TypeError("cmd must be a list of arguments, e.g. ['make', '-j4']")
        if not cmd:
            raise ValueError("cmd is empty: give the command to run, e.g. ['make', '-j4']")
        if since_process_start:
            raise ValueError(
                "since_process_start goes with ProcessMonitor.from_pid (a launched command "
                "is counted from its start anyway)"
            )
        self._start(
            [os.fspath(a) for a in cmd],
            None,
            base_interval_ms,
            max_interval_ms,
            include_children,
            since_process_start,
            backend,
            None if env is None else [(str(k), str(v)) for k, v in env.items()],
            None if cwd is None else os.fspath(cwd),
        )

    @classmethod
    def from_pid(
        cls,
        pid: int,
        *,
        base_interval_ms: int = 1000,
        max_interval_ms: int = 5000,
        include_children: bool = True,
        since_process_start: bool = False,
        backend: str = "auto",
    ) -> ProcessMonitor:
        """Follows a running process and its descendants, from now (or from
        each one's start with ``since_process_start=True``).
        ``ProcessLookupError`` when no such process runs."""
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ValueError(f"pid must be a positive int, not {pid!r}")
        self = cls.__new__(cls)
        self._start(
            None,
            pid,
            base_interval_ms,
            max_interval_ms,
            include_children,
            since_process_start,
            backend,
            None,
            None,
        )
        return self

    def _start(
        self,
        argv: list[str] | None,
        pid: int | None,
        base_interval_ms: int,
        max_interval_ms: int,
        include_children: bool,
        since_process_start: bool,
        backend: str,
        env: list[tuple[str, str]] | None,
        cwd: str | None,
    ) -> None:
        base = _interval("base_interval_ms", base_interval_ms)
        most = _interval("max_interval_ms", max_interval_ms)
        if most < base:
            raise ValueError(
                f"max_interval_ms ({most}) is shorter than base_interval_ms ({base})"
            )
        if backend not in _BACKENDS:
            raise ValueError(f"backend {backend!r}: choose one of {', '.join(_BACKENDS)}")
        self._report: Report | None = None
        self._core = _core.Monitor(
            argv,
            pid,
            base,
            most,
            bool(include_children),
            bool(since_process_start),
            backend,
            env,
            cwd,
        )

    @property
    def pid(self) -> int:
        """The command's (or the attached process's) pid."""
        return self._core.pid

    def get_pid(self) -> int:
        """The command's (or the attached process's) pid."""
        return self._core.pid

    @property
    def backend(self) -> str:
        """``"ebpf"`` or ``"procfs"``: what follows the tree."""
        return self._core.backend

    def is_running(self) -> bool:
        """Whether the process itself (not its descendants) still runs."""
        return self._core.running()

    def sample_once(self) -> Sample:
        """The tree now: a fresh sample while it runs, its last one after."""
        text = self._core.sample_now()
        if text is None:
            raise PmetError("no sample was taken: the session ended before its first")
        return Sample(text)

    def children(self) -> list[ProcessSample]:
        """The live descendants, with their figures now."""
        return [p for p in self.sample_once().processes if p.pid != self.pid]

    def samples(self) -> Iterator[Sample]:
        """Each sample as the session takes it, until the tree ends."""
        while True:
            text = self._core.next_sample(_POLL_S)
            if text is not None:
                yield Sample(text)
            elif self._core.wait(0):
                # Ended: what is left in the queue, then stop.
                while (text := self._core.next_sample(0)) is not None:
                    yield Sample(text)
                return

    def run(
        self,
        duration: float | None = None,
        on_sample: Callable[[Sample], Any] | None = None,
    ) -> Report:
        """Waits for the tree to end (or ``duration`` seconds: the command
        then gets SIGTERM, and SIGKILL 5 s later) and returns the report.
        Other Python threads run meanwhile. ``on_sample`` is called with
        each sample. Ctrl+C reaches the command as it would without pmet,
        which waits for the tree to end (a second Ctrl+C stops waiting); the
        ``KeyboardInterrupt`` then carries the report as ``.report``."""
        if duration is not None and not duration > 0:
            raise ValueError(f"duration must be a positive number of seconds, not {duration!r}")
        deadline = None if duration is None else time.monotonic() + duration
        stopping = False
        try:
            while not self._core.wait(_POLL_S):
                self._deliver(on_sample)
                if deadline is not None and time.monotonic() >= deadline:
                    # As timeout(1): SIGTERM, then SIGKILL for what ignores it.
                    self._core.signal(signal.SIGKILL if stopping else signal.SIGTERM)
                    stopping = True
                    deadline = time.monotonic() + _TERM_GRACE_S
            self._deliver(on_sample)
            return self._finish()
        except KeyboardInterrupt as e:
            self._core.signal(signal.SIGINT)
            e.report = self._finish_interrupted()  # type: ignore[attr-defined]
            raise

    def _deliver(self, on_sample: Callable[[Sample], Any] | None) -> None:
        while (text := self._core.next_sample(0)) is not None:
            if on_sample is not None:
                on_sample(Sample(text))

    def _finish_interrupted(self) -> Report:
        while True:
            try:
                while not self._core.wait(_POLL_S):
                    pass
                return self._finish()
            except KeyboardInterrupt:
                # Again: stop waiting, the report now.
                self._core.signal(signal.SIGINT)

    def _finish(self) -> Report:
        if self._report is None:
            self._core.wait(None)
            text, exit_code = self._core.result()
            self._report = Report(text)
        return self._report

    def stop(self) -> Report:
        """Stops the tree (SIGTERM, then SIGKILL 5 s later for what ignores
        it) or, attached, stops following it; returns the report."""
        if not self._core.wait(0):
            self._core.signal(signal.SIGTERM)
            # pmet itself gives up on the tree 5 s after a SIGTERM: kill
            # what is left just before.
            if not self._core.wait(_TERM_GRACE_S):
                self._core.signal(signal.SIGKILL)
        return self._finish()

    @property
    def report(self) -> Report | None:
        """The report, once the session has ended and it was taken."""
        return self._report

    def __enter__(self) -> ProcessMonitor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "ended"
        return f"<pmet.ProcessMonitor pid={self.pid} backend={self.backend} {state}>"


def trace(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    duration: float | None = None,
    on_sample: Callable[[Sample], Any] | None = None,
    **kwargs: Any,
) -> Report:
    """Runs ``cmd`` under pmet and returns its report, in one call
    (``ProcessMonitor``'s options as keywords)."""
    with ProcessMonitor(cmd, **kwargs) as m:
        return m.run(duration=duration, on_sample=on_sample)


def load_report(path: str | os.PathLike[str]) -> Report:
    """Reads a report written by ``pmet trace -o`` (or ``Report.write``).
    ``FileNotFoundError`` when there is none; ``PmetError`` when the file is
    not a pmet report (named, with what is wrong)."""
    return Report(_core.load_report(os.fspath(path)))


def _report_text(r: Report | str | os.PathLike[str]) -> str:
    if isinstance(r, Report):
        return r.to_json()
    return load_report(r).to_json()


def diff(
    base: Report | str | os.PathLike[str],
    new: Report | str | os.PathLike[str],
    fail_if: str | None = None,
) -> Diff:
    """Compares two runs (reports, or report files) as ``pmet diff`` does;
    ``fail_if`` (e.g. ``"cpu>+10%,rss>+5%"``) sets limits, and
    ``Diff.breaches`` lists those that did not hold. ``ValueError`` for a
    limit pmet cannot read."""
    return Diff(_core.diff(_report_text(base), _report_text(new), fail_if))
