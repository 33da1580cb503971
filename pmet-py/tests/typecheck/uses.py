"""Checked by mypy --strict (cargo xtask test): what users write type-checks,
with the fields of reports and samples known."""

import pmet


def tx_of_first(cmd: list[str]) -> int:
    report: pmet.Report = pmet.trace(cmd, base_interval_ms=100)
    net = report.processes[0].net
    return 0 if net is None else net.tcp.tx_bytes + net.udp.tx_bytes


def watch(pid: int) -> float:
    with pmet.ProcessMonitor.from_pid(pid) as m:
        s: pmet.Sample = m.sample_once()
        kids: list[pmet.ProcessSample] = m.children()
        return s.cpu_pct + sum(k.cpu_pct for k in kids)


def gate(base: str, new: str) -> list[str]:
    d: pmet.Diff = pmet.diff(pmet.load_report(base), new, fail_if="cpu>+10%")
    return [v.message for v in d.breaches]


def totals(r: pmet.Report) -> tuple[int, float, int | None]:
    return (r.totals.processes, r.totals.cpu_user_s, r.exit_code)
