//! The exposition as one OTLP metrics request (protobuf), shaped as the
//! OpenTelemetry Collector's hostmetrics receiver shapes process metrics:
//! each process with series of its own is a resource of its own
//! (`process.pid`, `process.parent_pid`, `process.executable.name`,
//! `container.id` on the resource), and the host's resource carries the
//! totals, the groups and pmet's own counts. Counters are cumulative from
//! the start of the run.

use super::openmetrics::{Counters, Exposed, GroupBy, Row};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
        metric::Data, number_data_point,
    },
    resource::v1::Resource,
};

/// A string attribute.
pub fn attr(key: &str, v: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
    }
}

fn int_attr(key: &str, v: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
    }
}

/// When: the start of the cumulative counts, and now (Unix nanoseconds).
#[derive(Clone, Copy, Debug)]
pub struct Times {
    pub start_ns: u64,
    pub now_ns: u64,
}

/// One metric being built: its points.
struct Family {
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    /// `Some(monotonic)` for a sum, `None` for a gauge.
    sum: Option<bool>,
    points: Vec<NumberDataPoint>,
}

impl Family {
    fn new(name: &'static str, unit: &'static str, description: &'static str) -> Self {
        Self {
            name,
            unit,
            description,
            sum: Some(true),
            points: Vec::new(),
        }
    }

    fn up_down(mut self) -> Self {
        self.sum = Some(false);
        self
    }

    fn gauge(mut self) -> Self {
        self.sum = None;
        self
    }

    fn point(&mut self, t: Times, attributes: Vec<KeyValue>, v: number_data_point::Value) {
        self.points.push(NumberDataPoint {
            attributes,
            start_time_unix_nano: if self.sum.is_some() { t.start_ns } else { 0 },
            time_unix_nano: t.now_ns,
            value: Some(v),
            ..Default::default()
        });
    }

    fn int(&mut self, t: Times, attributes: Vec<KeyValue>, v: u64) {
        let v = i64::try_from(v).unwrap_or(i64::MAX);
        self.point(t, attributes, number_data_point::Value::AsInt(v));
    }

    fn double(&mut self, t: Times, attributes: Vec<KeyValue>, v: f64) {
        self.point(t, attributes, number_data_point::Value::AsDouble(v));
    }

    fn metric(self) -> Option<Metric> {
        if self.points.is_empty() {
            return None;
        }
        let data = match self.sum {
            Some(is_monotonic) => Data::Sum(Sum {
                data_points: self.points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic,
            }),
            None => Data::Gauge(Gauge {
                data_points: self.points,
            }),
        };
        Some(Metric {
            name: self.name.to_owned(),
            description: self.description.to_owned(),
            unit: self.unit.to_owned(),
            data: Some(data),
            ..Default::default()
        })
    }
}

/// `more` after `base`.
fn with(base: &[KeyValue], more: &[(&str, &str)]) -> Vec<KeyValue> {
    let mut a = base.to_vec();
    a.extend(more.iter().map(|(k, v)| attr(k, *v)));
    a
}

const CPU_MODES: [&str; 2] = ["user", "system"];
const DISK_DIRECTIONS: [&str; 2] = ["read", "write"];
/// The order of [`Counters::net`].
const NET: [(&str, &str); 4] = [
    ("tcp", "transmit"),
    ("tcp", "receive"),
    ("udp", "transmit"),
    ("udp", "receive"),
];

/// The families for usage counters under `prefix` (`process`, `pmet`,
/// `pmet.group`), each point with `base` attributes.
struct Usage {
    cpu: Family,
    disk: Family,
    net: Family,
    memory: Family,
}

impl Usage {
    fn new(prefix: &str) -> Self {
        let (cpu, disk, net, memory) = match prefix {
            "process" => (
                "process.cpu.time",
                "process.disk.io",
                "process.network.io",
                "process.memory.usage",
            ),
            "pmet" => (
                "pmet.cpu.time",
                "pmet.disk.io",
                "pmet.network.io",
                "pmet.memory.usage",
            ),
            _ => (
                "pmet.group.cpu.time",
                "pmet.group.disk.io",
                "pmet.group.network.io",
                "pmet.group.memory.usage",
            ),
        };
        Self {
            cpu: Family::new(cpu, "s", "CPU seconds, by mode"),
            disk: Family::new(disk, "By", "Storage bytes read or written"),
            net: Family::new(net, "By", "Socket payload bytes sent or received"),
            memory: Family::new(memory, "By", "Resident memory now").up_down(),
        }
    }

    fn counters(&mut self, t: Times, base: &[KeyValue], c: &Counters, rss: u64) {
        for (mode, ns) in CPU_MODES.iter().zip(c.cpu_ns) {
            self.cpu
                .double(t, with(base, &[("cpu.mode", mode)]), ns as f64 / 1e9);
        }
        for (dir, v) in DISK_DIRECTIONS.iter().zip(c.disk) {
            self.disk
                .int(t, with(base, &[("disk.io.direction", dir)]), v);
        }
        for ((transport, dir), v) in NET.iter().zip(c.net.into_iter().flatten()) {
            let a = with(
                base,
                &[
                    ("network.io.direction", dir),
                    ("network.transport", transport),
                ],
            );
            self.net.int(t, a, v);
        }
        self.memory.int(t, base.to_vec(), rss);
    }

    fn metrics(self) -> impl Iterator<Item = Metric> {
        [self.cpu, self.disk, self.net, self.memory]
            .into_iter()
            .filter_map(Family::metric)
    }
}

/// One process's resource attributes after the host's.
fn process_resource(host: &[KeyValue], r: &Row) -> Resource {
    let mut a = host.to_vec();
    a.push(int_attr("process.pid", i64::from(r.pid)));
    if let Some(p) = r.ppid {
        a.push(int_attr("process.parent_pid", i64::from(p)));
    }
    a.push(attr("process.executable.name", r.exe.clone()));
    if let Some(c) = &r.container {
        a.push(attr("container.id", c.clone()));
    }
    Resource {
        attributes: a,
        ..Default::default()
    }
}

fn process_metrics(t: Times, r: &Row) -> Vec<Metric> {
    let mut u = Usage::new("process");
    u.cpu
        .double(t, vec![attr("cpu.mode", "user")], r.cpu_user_s);
    u.cpu
        .double(t, vec![attr("cpu.mode", "system")], r.cpu_system_s);
    for (dir, v) in DISK_DIRECTIONS
        .iter()
        .zip([r.disk_read_bytes, r.disk_write_bytes])
    {
        u.disk.int(t, vec![attr("disk.io.direction", *dir)], v);
    }
    if let Some(n) = &r.net {
        let v = [
            n.tcp.tx_bytes,
            n.tcp.rx_bytes,
            n.udp.tx_bytes,
            n.udp.rx_bytes,
        ];
        for ((transport, dir), v) in NET.iter().zip(v) {
            let a = vec![
                attr("network.io.direction", *dir),
                attr("network.transport", *transport),
            ];
            u.net.int(t, a, v);
        }
    }
    u.memory.int(t, vec![], r.rss_bytes);
    let mut out: Vec<Metric> = u.metrics().collect();
    if let Some((mem, util)) = r.gpu {
        let mut m = Family::new(
            "process.gpu.memory.usage",
            "By",
            "GPU memory the process holds, all devices together",
        )
        .up_down();
        m.int(t, vec![], mem);
        let mut u = Family::new(
            "process.gpu.utilization",
            "1",
            "SM (or busiest engine) utilisation of the process, 1 for a whole GPU",
        )
        .gauge();
        u.double(t, vec![], util);
        out.extend([m, u].into_iter().filter_map(Family::metric));
    }
    out
}

fn host_metrics(t: Times, e: &Exposed) -> Vec<Metric> {
    let mut total = Usage::new("pmet");
    total.counters(t, &[], &e.total, e.rss_bytes);
    let mut group = Usage::new("group");
    let mut processes = Family::new(
        "pmet.group.processes",
        "{process}",
        "Processes that entered the group",
    );
    let mut alive = Family::new(
        "pmet.group.processes.alive",
        "{process}",
        "Processes of the group alive now",
    )
    .up_down();
    let key = match e.by {
        GroupBy::Name => "process.executable.name",
        GroupBy::Container => "container.id",
    };
    for g in &e.groups {
        let mut base = vec![attr(key, g.key.clone())];
        if g.overflow {
            base.push(KeyValue {
                key: "otel.metric.overflow".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::BoolValue(true)),
                }),
            });
        }
        group.counters(t, &base, &g.sums, g.rss_bytes);
        processes.int(t, base.clone(), g.processes);
        alive.int(t, base, g.alive);
    }
    let mut seen = Family::new(
        "pmet.processes.seen",
        "{process}",
        "Processes of the traced scope seen so far",
    );
    seen.int(t, vec![], e.tree.seen);
    let mut lost = Family::new(
        "pmet.lost_events",
        "{event}",
        "Events or figures pmet lost (0 on a healthy run)",
    );
    lost.int(t, vec![], e.tree.lost);
    let mut now_alive = Family::new(
        "pmet.processes.alive",
        "{process}",
        "Processes of the traced scope alive now",
    )
    .up_down();
    now_alive.int(t, vec![], e.tree.alive);
    let mut held = Family::new(
        "pmet.processes.held",
        "{process}",
        "Processes pmet holds in memory",
    )
    .up_down();
    held.int(t, vec![], e.tree.held);
    total
        .metrics()
        .chain(group.metrics())
        .chain(
            [processes, alive, seen, lost, now_alive, held]
                .into_iter()
                .filter_map(Family::metric),
        )
        .collect()
}

/// The request for `e`: the host's resource (`host`: its attributes,
/// `service.name` among them) first, then one per process with series of
/// its own.
pub fn request(e: &Exposed, host: &[KeyValue], t: Times) -> ExportMetricsServiceRequest {
    let scope = || {
        Some(InstrumentationScope {
            name: "pmet".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    };
    let resource = |resource: Resource, metrics: Vec<Metric>| ResourceMetrics {
        resource: Some(resource),
        scope_metrics: vec![ScopeMetrics {
            scope: scope(),
            metrics,
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut out = vec![resource(
        Resource {
            attributes: host.to_vec(),
            ..Default::default()
        },
        host_metrics(t, e),
    )];
    for r in &e.rows {
        out.push(resource(process_resource(host, r), process_metrics(t, r)));
    }
    ExportMetricsServiceRequest {
        resource_metrics: out,
    }
}

/// The host's resource attributes: `service.name` from `OTEL_SERVICE_NAME`,
/// else from `OTEL_RESOURCE_ATTRIBUTES`, else `pmet`; `host.name`; and
/// every other `key=value` of `OTEL_RESOURCE_ATTRIBUTES` (percent-encoded,
/// as the specification has them; a malformed pair is left out).
pub fn host_resource(
    host_name: &str,
    service: Option<&str>,
    attributes: Option<&str>,
) -> Vec<KeyValue> {
    let mut extra: Vec<(String, String)> = pairs(attributes.unwrap_or_default());
    extra.retain(|(k, _)| k != "host.name");
    let from_attrs = extra
        .iter()
        .position(|(k, _)| k == "service.name")
        .map(|i| extra.remove(i).1);
    let service = service
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .or(from_attrs)
        .unwrap_or_else(|| "pmet".into());
    let mut a = vec![attr("service.name", service), attr("host.name", host_name)];
    a.extend(extra.into_iter().map(|(k, v)| attr(&k, v)));
    a
}

/// `key=value,key=value` as the OpenTelemetry environment variables have
/// them (values percent-encoded); a malformed pair is left out, and a key
/// given twice keeps its last value.
pub fn pairs(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in text.split(',') {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            continue;
        }
        if let Some(v) = percent_decode(v) {
            out.retain(|(ek, _)| ek != k);
            out.push((k.to_owned(), v));
        }
    }
    out
}

/// `%XX` escapes decoded; `None` for a bad escape or bytes not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::net::{Net, Traffic};
    use crate::render::openmetrics::{Group, TreeFigures};

    fn s(kv: &KeyValue) -> (String, String) {
        let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            Some(any_value::Value::IntValue(i)) => i.to_string(),
            Some(any_value::Value::BoolValue(b)) => b.to_string(),
            other => format!("{other:?}"),
        };
        (kv.key.clone(), v)
    }

    fn value(p: &NumberDataPoint) -> f64 {
        match p.value {
            Some(number_data_point::Value::AsInt(i)) => i as f64,
            Some(number_data_point::Value::AsDouble(d)) => d,
            None => f64::NAN,
        }
    }

    /// A point: its metric, its attributes, its value.
    type Point = (String, Vec<(String, String)>, f64);

    /// Every point of one resource's metrics.
    fn points(rm: &ResourceMetrics) -> Vec<Point> {
        let mut out = Vec::new();
        for m in &rm.scope_metrics[0].metrics {
            let pts = match m.data.as_ref().unwrap() {
                Data::Sum(s) => &s.data_points,
                Data::Gauge(g) => &g.data_points,
                _ => unreachable!(),
            };
            for p in pts {
                out.push((
                    m.name.clone(),
                    p.attributes.iter().map(s).collect(),
                    value(p),
                ));
            }
        }
        out
    }

    fn exposed() -> Exposed {
        let net = Net {
            tcp: Traffic {
                tx_bytes: 30000,
                rx_bytes: 7000,
                ..Default::default()
            },
            udp: Traffic::default(),
        };
        Exposed {
            rows: vec![Row {
                pid: 42,
                ppid: Some(1),
                exe: "curl".into(),
                container: None,
                cpu_user_s: 0.25,
                cpu_system_s: 0.5,
                rss_bytes: 4096,
                disk_read_bytes: 1,
                disk_write_bytes: 2,
                net: Some(net),
                gpu: None,
            }],
            by: GroupBy::Name,
            groups: vec![
                Group {
                    key: "curl".into(),
                    sums: Counters {
                        cpu_ns: [250_000_000, 500_000_000],
                        disk: [1, 2],
                        net: Some([30000, 7000, 0, 0]),
                    },
                    processes: 3,
                    alive: 1,
                    rss_bytes: 4096,
                    ..Default::default()
                },
                Group {
                    overflow: true,
                    processes: 9,
                    ..Default::default()
                },
            ],
            total: Counters {
                cpu_ns: [1_000_000_000, 0],
                disk: [5, 6],
                net: Some([40000, 7000, 100, 0]),
            },
            rss_bytes: 8192,
            tree: TreeFigures {
                seen: 12,
                alive: 2,
                lost: 0,
                held: 5,
            },
        }
    }

    #[test]
    fn processes_are_resources_and_the_host_holds_totals_and_groups() {
        let t = Times {
            start_ns: 10,
            now_ns: 20,
        };
        let host = host_resource("box", None, None);
        let req = request(&exposed(), &host, t);
        assert_eq!(req.resource_metrics.len(), 2);
        let res = |i: usize| -> Vec<(String, String)> {
            (req.resource_metrics[i]
                .resource
                .as_ref()
                .unwrap()
                .attributes
                .iter())
            .map(s)
            .collect()
        };
        let kv = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(res(0), [kv("service.name", "pmet"), kv("host.name", "box")]);
        assert_eq!(
            res(1),
            [
                kv("service.name", "pmet"),
                kv("host.name", "box"),
                kv("process.pid", "42"),
                kv("process.parent_pid", "1"),
                kv("process.executable.name", "curl"),
            ]
        );
        let host_points = points(&req.resource_metrics[0]);
        let find = |pts: &[Point], name: &str, attrs: &[(&str, &str)]| {
            let hits: Vec<f64> = pts
                .iter()
                .filter(|(n, a, _)| {
                    n == name
                        && a.len() == attrs.len()
                        && attrs.iter().all(|(k, v)| a.contains(&kv(k, v)))
                })
                .map(|(_, _, v)| *v)
                .collect();
            assert_eq!(hits.len(), 1, "{name} {attrs:?}: {pts:?}");
            hits[0]
        };
        let tx = [
            ("network.io.direction", "transmit"),
            ("network.transport", "tcp"),
        ];
        assert_eq!(find(&host_points, "pmet.network.io", &tx), 40000.0);
        assert_eq!(
            find(&host_points, "pmet.cpu.time", &[("cpu.mode", "user")]),
            1.0
        );
        let mut curl_tx = tx.to_vec();
        curl_tx.push(("process.executable.name", "curl"));
        assert_eq!(
            find(&host_points, "pmet.group.network.io", &curl_tx),
            30000.0
        );
        assert_eq!(
            find(
                &host_points,
                "pmet.group.processes",
                &[
                    ("process.executable.name", ""),
                    ("otel.metric.overflow", "true")
                ]
            ),
            9.0
        );
        assert_eq!(find(&host_points, "pmet.processes.seen", &[]), 12.0);
        // The process's points carry no process attributes: its resource does.
        let own = points(&req.resource_metrics[1]);
        assert_eq!(find(&own, "process.network.io", &tx), 30000.0);
        assert_eq!(
            find(&own, "process.cpu.time", &[("cpu.mode", "system")]),
            0.5
        );
        assert_eq!(find(&own, "process.memory.usage", &[]), 4096.0);
        // Cumulative sums from the run's start; gauges at a time alone.
        for m in &req.resource_metrics[0].scope_metrics[0].metrics {
            if let Some(Data::Sum(s)) = &m.data {
                assert_eq!(
                    s.aggregation_temporality,
                    AggregationTemporality::Cumulative as i32
                );
                assert!(
                    s.data_points
                        .iter()
                        .all(|p| p.start_time_unix_nano == 10 && p.time_unix_nano == 20)
                );
            }
        }
    }

    #[test]
    fn the_service_name_and_resource_attributes_come_from_the_environment() {
        let kv = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let got = |svc, attrs| -> Vec<(String, String)> {
            host_resource("box", svc, attrs).iter().map(s).collect()
        };
        assert_eq!(
            got(
                Some("ci-runner"),
                Some("deployment.environment=prod,team=a%2Cb,bad,host.name=x")
            ),
            [
                kv("service.name", "ci-runner"),
                kv("host.name", "box"),
                kv("deployment.environment", "prod"),
                kv("team", "a,b"),
            ]
        );
        assert_eq!(
            got(None, Some("service.name=from-attrs")),
            [kv("service.name", "from-attrs"), kv("host.name", "box")]
        );
        assert_eq!(got(Some(" "), None)[0], kv("service.name", "pmet"));
    }
}
