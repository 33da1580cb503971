"""Typed views of pmet's JSON: a report, a sample, a comparison.

Each object reads its fields from the JSON the native module produced, by
the JSON report's own names (``report.processes[0].net.tcp.tx_bytes``);
nested objects and lists of objects come back as the typed views declared
for them (see ``__init__.pyi``). ``to_dict()`` gives the plain JSON value.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, ClassVar, Iterator, Mapping

from . import _core


class Record:
    """A JSON object whose fields read as attributes.

    A field the object does not have raises ``AttributeError``; a field
    whose value is unknown is ``None`` (never 0).
    """

    __slots__ = ("_data",)
    #: Views for nested fields: field name to the class of its object, or
    #: of the objects in its list.
    _nested: ClassVar[dict[str, type[Record]]] = {}

    def __init__(self, data: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_data", dict(data))

    def __getattr__(self, name: str) -> Any:
        try:
            value = self._data[name]
        except KeyError:
            raise AttributeError(
                f"{type(self).__name__} has no field {name!r}; it has: {', '.join(self._data)}"
            ) from None
        return self._view(name, value)

    def _view(self, name: str, value: Any) -> Any:
        cls = self._nested.get(name, Record)
        if isinstance(value, dict):
            return cls(value)
        if isinstance(value, list):
            return [cls(v) if isinstance(v, dict) else v for v in value]
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __getitem__(self, name: str) -> Any:
        return self._view(name, self._data[name])

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._data))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._data == self._data  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{k}={v!r}" for k, v in self._data.items() if not isinstance(v, (dict, list))
        )
        return f"{type(self).__name__}({shown})"

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, as plain Python values (a copy)."""
        return copy.deepcopy(self._data)


class Traffic(Record):
    """Bytes and calls one way or the other, for one protocol."""


class Net(Record):
    """Socket payload bytes, TCP and UDP, sent (tx) and received (rx)."""

    _nested = {"tcp": Traffic, "udp": Traffic}


class Lost(Record):
    """Every cause of a loss pmet counts (0 on a healthy run)."""


class GpuDevice(Record):
    """One GPU pmet asked about."""


class GpuCollector(Record):
    """The GPUs followed, and through what (``nvml`` or ``fdinfo``)."""

    _nested = {"devices": GpuDevice}


class GpuUse(Record):
    """One process's GPU use (zeros for a process that used none)."""


class GpuTotals(Record):
    """The tree's GPU use."""


class Collector(Record):
    """How the figures were collected."""

    _nested = {"lost": Lost, "gpu": GpuCollector}


class Totals(Record):
    """The whole tree, summed."""

    _nested = {"net": Net, "gpu": GpuTotals}


class Connection(Record):
    """One socket a process used."""


class ProcessReport(Record):
    """One process of the tree, from its start (or attach) to its end."""

    _nested = {"net": Net, "connections": Connection, "gpu": GpuUse}


class Report(Record):
    """A run's report: the same object as ``pmet trace -o report.json``.

    ``exit_code`` is the status pmet exits with for the run (the command's,
    or 128+N when signal N killed it).
    """

    _nested = {"collector": Collector, "totals": Totals, "processes": ProcessReport}
    __slots__ = ("_text",)

    def __init__(self, text: str) -> None:
        super().__init__(json.loads(text))
        object.__setattr__(self, "_text", text)

    def to_json(self) -> str:
        """The report as the CLI writes it (compact JSON, same field order)."""
        return self._text

    def write(self, path: str | os.PathLike[str]) -> None:
        """Writes the report where ``pmet report`` (or ``load_report``) reads it.

        Written as ``pmet trace -o`` writes: as the user who ran sudo, never
        into another user's file or FIFO in a sticky world-writable directory
        such as /tmp (``PermissionError``), a FIFO nobody reads given up on
        after 10 s (``TimeoutError``).
        """
        _core.write_report(os.fspath(path), self._text)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        """A report from its JSON object (checked as ``pmet report`` checks it)."""
        return cls(_core.canonical_report(json.dumps(data)))

    def __repr__(self) -> str:
        d = self._data
        return (
            f"Report(command={d.get('command')!r}, exit_code={d.get('exit_code')!r}, "
            f"processes={len(d.get('processes') or [])}, duration_s={d.get('duration_s')!r})"
        )


class Rate(Record):
    """Bytes per second over the last interval, each way and protocol."""


class ProcessSample(Record):
    """One process at a sample: its figures so far and its rates."""

    _nested = {"net": Net, "net_rate": Rate}


class GpuNow(Record):
    """The live processes' GPU use at one sample (absent without a driver)."""


class Sample(Record):
    """The tree at one moment: totals so far, rates since the previous
    sample, and each live process."""

    _nested = {"net": Net, "net_rate": Rate, "processes": ProcessSample, "gpu": GpuNow}

    def __init__(self, text: str) -> None:
        data = json.loads(text)
        # Written only where a GPU driver is; None (unknown) elsewhere.
        data.setdefault("gpu", None)
        super().__init__(data)

    def to_json(self) -> str:
        return json.dumps(self._data, separators=(",", ":"))


class MetricChange(Record):
    """One metric in both runs: ``base``, ``new``, ``change``, ``change_pct``."""


class Verdict(Record):
    """One ``fail_if`` limit: ``limit``, ``ok``, ``message``."""


class Diff(Record):
    """Two runs compared, as ``pmet diff --format json``."""

    _nested = {"metrics": MetricChange, "limits": Verdict}

    def __init__(self, text: str) -> None:
        super().__init__(json.loads(text))

    @property
    def breaches(self) -> list[Verdict]:
        """The limits that did not hold (empty: the gate passes)."""
        return [v for v in self.limits if not v.ok]

    def metric(self, name: str) -> MetricChange:
        """The metric named ``name`` (``cpu``, ``rss``, ``net_tx``...)."""
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)
