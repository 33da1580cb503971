"""Typed views of pmet's JSON (the fields every IDE and mypy should know).

Field names are the JSON report's (schema ``pmet.report.v1``); a figure
pmet could not know is ``None``, never 0.
"""

import os
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

class Record:
    _nested: ClassVar[dict[str, type[Record]]]
    def __init__(self, data: Mapping[str, Any]) -> None: ...
    def __getattr__(self, name: str) -> Any: ...
    def __getitem__(self, name: str) -> Any: ...
    def __contains__(self, name: object) -> bool: ...
    def __iter__(self) -> Iterator[str]: ...
    def to_dict(self) -> dict[str, Any]: ...

class Traffic(Record):
    tx_bytes: int
    rx_bytes: int
    tx_calls: int
    rx_calls: int

class Net(Record):
    tcp: Traffic
    udp: Traffic

class Lost(Record):
    ring_buffer: int
    tracked_map_full: int
    net_map_full: int
    dying_map_full: int
    read_failures: int
    taskstats_overflows: int
    exits_unseen: int
    totals_missing: int
    unmatched_events: int
    argv_truncated: int
    free_events_missed: int
    frees_kept_at_last_switch: int
    frees_kept_at_exit: int
    stale_free_records: int
    conn_map_full: int

class GpuDevice(Record):
    uuid: str
    name: str
    driver: str
    memory_total_bytes: int | None
    accounting: bool | None

class GpuCollector(Record):
    source: str
    devices: list[GpuDevice]

class GpuUse(Record):
    devices: list[str]
    memory_peak_bytes: int
    sm_pct_mean: float
    sm_pct_max: float
    mem_pct_mean: float | None
    busy_s: float
    accounting: bool

class GpuTotals(Record):
    processes: int
    memory_peak_bytes: int
    busy_s: float

class Collector(Record):
    ebpf: bool
    interval_ms: int
    samples: int
    events: int
    lost_events: int
    lost: Lost
    taskstats: bool
    exit_totals: bool
    self_cpu_s: float | None
    startup_cpu_s: float | None
    self_peak_rss_bytes: int | None
    export_errors: int
    gpu: GpuCollector | None

class Totals(Record):
    processes: int
    cpu_user_s: float
    cpu_system_s: float
    disk_read_bytes: int
    disk_write_bytes: int
    disk_cancelled_write_bytes: int
    net: Net | None
    processes_without_figures: int
    max_processes_alive: int
    failed_processes: int
    pss_peak_bytes: int | None
    processes_running: int
    gpu: GpuTotals | None

class Connection(Record):
    proto: str
    role: str
    local: str | None
    remote: str | None
    tx_bytes: int
    rx_bytes: int
    opened_offset_s: float
    closed_offset_s: float | None
    outcome: str
    retransmits: int

class ProcessReport(Record):
    pid: int
    ppid: int | None
    parent: int | None
    comm: str
    argv: list[str]
    argv_hex: list[str | None] | None
    exe: str | None
    start_offset_s: float
    end_offset_s: float | None
    exit_code: int | None
    exit_signal: int | None
    core_dumped: bool
    cpu_user_s: float | None
    cpu_system_s: float | None
    peak_rss_bytes: int | None
    max_threads: int
    disk_read_bytes: int | None
    disk_write_bytes: int | None
    disk_cancelled_write_bytes: int | None
    net: Net | None
    figures: str
    voluntary_ctxt_switches: int | None
    involuntary_ctxt_switches: int | None
    major_faults: int | None
    preexisting: bool
    vanished: bool
    started_at: str | None
    uid: int | None
    gid: int | None
    user: str | None
    cgroup: str | None
    container: str | None
    pid_ns: int | None
    ns_pid: int | None
    cwd: str | None
    env: dict[str, str] | None
    connections: list[Connection] | None
    gpu: GpuUse | None

class Report(Record):
    schema: str
    pmet_version: str
    command: list[str] | None
    root_pid: int
    started_at: str
    duration_s: float
    exit_code: int | None
    exit_signal: int | None
    collector: Collector
    totals: Totals
    processes: list[ProcessReport]
    mode: str
    stopped_early: str | None
    counting_from: str
    def __init__(self, text: str) -> None: ...
    def to_json(self) -> str: ...
    def write(self, path: str | os.PathLike[str]) -> None: ...
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report: ...

class Rate(Record):
    tcp_tx: float
    tcp_rx: float
    udp_tx: float
    udp_rx: float

class ProcessSample(Record):
    pid: int
    ppid: int | None
    comm: str
    argv: list[str]
    cpu_pct: float
    cpu_s: float | None
    rss_bytes: int | None
    net: Net | None
    net_rate: Rate
    disk_read_rate: float
    disk_write_rate: float
    ended: bool

class GpuNow(Record):
    memory_bytes: int
    sm_pct: float

class Sample(Record):
    t: float
    alive: int
    seen: int
    failed: int
    cpu_pct: float
    cpu_s: float
    rss_bytes: int
    disk_read_bytes: int
    disk_write_bytes: int
    disk_read_rate: float
    disk_write_rate: float
    net: Net | None
    net_rate: Rate
    lost: int
    gpu: GpuNow | None
    processes: list[ProcessSample]
    def __init__(self, text: str) -> None: ...
    def to_json(self) -> str: ...

class MetricChange(Record):
    name: str
    label: str
    unit: str
    base: float | None
    new: float | None
    change: float | None
    change_pct: float | None

class Verdict(Record):
    limit: str
    ok: bool
    message: str

class Diff(Record):
    metrics: list[MetricChange]
    limits: list[Verdict]
    breached: bool
    def __init__(self, text: str) -> None: ...
    @property
    def breaches(self) -> list[Verdict]: ...
    def metric(self, name: str) -> MetricChange: ...
