//! GPU use per process, where a driver tells it: NVIDIA through NVML
//! (`libnvidia-ml.so.1`, loaded at run time, so one pmet binary runs with or
//! without a driver), AMD and Intel through each DRM client's
//! `/proc/PID/fdinfo` (the kernel's drm-usage-stats). No driver: no source,
//! and every GPU figure is null.
//!
//! NVML's per-process utilisation comes as samples stamped by the driver;
//! each device keeps the newest stamp it has taken in, so the next look asks
//! only for what is newer (as nvitop does): no sample counted twice, none
//! skipped. DRM engines are busy-time counters, turned into a percentage
//! over the wall time between two looks.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// One GPU, as its driver names it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// NVML's UUID (`GPU-…`), or the DRM device's PCI address.
    pub uuid: String,
    /// Its marketing name (NVML), or the DRM driver's name.
    pub name: String,
    /// The kernel driver and its version (`nvidia 550.54.15`, `amdgpu`).
    pub driver: String,
    /// Its memory (NVML).
    pub memory_total_bytes: Option<u64>,
    /// NVML accounting mode was on (pmet never turns it on); `None` where
    /// the driver has no such mode.
    pub accounting: Option<bool>,
}

/// What one process was seen doing on one GPU at one look.
#[derive(Clone, Debug, PartialEq)]
pub struct Use {
    /// The process (host pid).
    pub pid: u32,
    /// The device's [`Device::uuid`].
    pub device: String,
    /// GPU memory it holds now.
    pub memory_bytes: u64,
    /// Its SM (NVML) or busiest engine (DRM) utilisation since the previous
    /// look, percent; `None` when none was reported for it.
    pub sm_pct: Option<f64>,
    /// Its memory-controller utilisation (NVML only), percent.
    pub mem_pct: Option<f64>,
}

/// A source of GPU figures.
pub trait GpuSource: Send {
    /// The GPUs it sees.
    fn devices(&self) -> &[Device];
    /// Which: `"nvml"` or `"fdinfo"`.
    fn kind(&self) -> &'static str;
    /// What the processes `pids` do on the GPUs now (`now_ns`: boottime).
    fn sample(&mut self, now_ns: u64, pids: &[u32]) -> Vec<Use>;
    /// Lifetime figures of an ended process, where the driver keeps them
    /// (NVML accounting mode): (device, peak memory, SM percent).
    fn lifetime(&self, _pid: u32) -> Vec<(String, Option<u64>, Option<f64>)> {
        Vec::new()
    }
}

/// The first source that finds a GPU, or why none did (for `-v`).
pub fn open() -> Result<Box<dyn GpuSource>, String> {
    let nvml = match Nvml::open() {
        Ok(n) => return Ok(Box::new(n)),
        Err(e) => e,
    };
    match Drm::open(Path::new("/dev/dri")) {
        Some(d) => Ok(Box::new(d)),
        None => Err(format!("{nvml}; no DRM render node in /dev/dri")),
    }
}

/// NVML's utilisation samples for one device, stamped in µs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UtilSample {
    /// The process.
    pub pid: u32,
    /// The driver's stamp (µs).
    pub timestamp: u64,
    /// SM percent.
    pub sm: u32,
    /// Memory-controller percent.
    pub mem: u32,
}

/// Takes in the samples newer than `last_seen` (moving it to the newest),
/// and returns each process's mean over them.
pub fn take_samples(samples: &[UtilSample], last_seen: &mut u64) -> HashMap<u32, (f64, f64)> {
    let mut sums: HashMap<u32, (f64, f64, u32)> = HashMap::new();
    let since = *last_seen;
    for s in samples.iter().filter(|s| s.timestamp > since) {
        let e = sums.entry(s.pid).or_default();
        e.0 += f64::from(s.sm);
        e.1 += f64::from(s.mem);
        e.2 += 1;
        *last_seen = (*last_seen).max(s.timestamp);
    }
    sums.into_iter()
        .map(|(pid, (sm, mem, n))| (pid, (sm / f64::from(n), mem / f64::from(n))))
        .collect()
}

/// NVIDIA GPUs through NVML.
pub struct Nvml {
    /// Shut down in `Drop`, timed (the driver can take a while).
    nvml: std::mem::ManuallyDrop<nvml_wrapper::Nvml>,
    devices: Vec<Device>,
    /// Per device, the newest utilisation stamp taken in.
    last_seen: Vec<u64>,
}

// NVML's handle is used from the session's thread only; the library itself
// is thread-safe.
unsafe impl Send for Nvml {}

impl Drop for Nvml {
    fn drop(&mut self) {
        let t0 = std::time::Instant::now();
        // SAFETY: dropped once, here, and never used again.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.nvml) };
        log::debug!("NVML shut down in {:?}", t0.elapsed());
    }
}

impl Nvml {
    /// Loads `libnvidia-ml.so.1` and lists the GPUs; the error says why not.
    pub fn open() -> Result<Self, String> {
        let nvml = nvml_wrapper::Nvml::builder()
            .lib_path(std::ffi::OsStr::new("libnvidia-ml.so.1"))
            .init()
            .map_err(|e| format!("no NVIDIA GPU: NVML ({e})"))?;
        let driver = nvml
            .sys_driver_version()
            .map(|v| format!("nvidia {v}"))
            .unwrap_or_else(|_| "nvidia".into());
        let count = nvml
            .device_count()
            .map_err(|e| format!("NVML device count: {e}"))?;
        let mut devices = Vec::new();
        for i in 0..count {
            let d = nvml
                .device_by_index(i)
                .map_err(|e| format!("NVML device {i}: {e}"))?;
            devices.push(Device {
                uuid: d.uuid().unwrap_or_else(|_| format!("nvidia{i}")),
                name: d.name().unwrap_or_default(),
                driver: driver.clone(),
                memory_total_bytes: d.memory_info().ok().map(|m| m.total),
                accounting: d.is_accounting_enabled().ok(),
            });
        }
        if devices.is_empty() {
            return Err("NVML found no NVIDIA GPU".into());
        }
        // NVML stamps samples with the CPU's clock in µs: only what comes
        // after pmet started is the traced run's.
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let last_seen = vec![now_us; devices.len()];
        Ok(Self {
            nvml: std::mem::ManuallyDrop::new(nvml),
            devices,
            last_seen,
        })
    }
}

impl GpuSource for Nvml {
    fn devices(&self) -> &[Device] {
        &self.devices
    }

    fn kind(&self) -> &'static str {
        "nvml"
    }

    fn sample(&mut self, _now_ns: u64, pids: &[u32]) -> Vec<Use> {
        let t0 = std::time::Instant::now();
        let out = self.sample_devices(pids);
        log::debug!("NVML sampled in {:?}", t0.elapsed());
        out
    }

    fn lifetime(&self, pid: u32) -> Vec<(String, Option<u64>, Option<f64>)> {
        self.devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.accounting == Some(true))
            .filter_map(|(i, dev)| {
                let d = self.nvml.device_by_index(i as u32).ok()?;
                let s = d.accounting_stats_for(pid).ok()?;
                Some((
                    dev.uuid.clone(),
                    s.max_memory_usage,
                    s.gpu_utilization.map(f64::from),
                ))
            })
            .collect()
    }
}

impl Nvml {
    fn sample_devices(&mut self, pids: &[u32]) -> Vec<Use> {
        use nvml_wrapper::enums::device::UsedGpuMemory;
        let wanted: std::collections::HashSet<u32> = pids.iter().copied().collect();
        let mut out = Vec::new();
        for (i, dev) in self.devices.iter().enumerate() {
            let Ok(d) = self.nvml.device_by_index(i as u32) else {
                continue;
            };
            // Memory: compute and graphics contexts (a process may hold both).
            let mut memory: BTreeMap<u32, u64> = BTreeMap::new();
            for p in d
                .running_compute_processes()
                .unwrap_or_default()
                .into_iter()
                .chain(d.running_graphics_processes().unwrap_or_default())
            {
                if let UsedGpuMemory::Used(b) = p.used_gpu_memory {
                    *memory.entry(p.pid).or_default() += b;
                } else {
                    memory.entry(p.pid).or_default();
                }
            }
            let samples: Vec<UtilSample> = d
                .process_utilization_stats(self.last_seen[i])
                .unwrap_or_default()
                .into_iter()
                .map(|s| UtilSample {
                    pid: s.pid,
                    timestamp: s.timestamp,
                    sm: s.sm_util,
                    mem: s.mem_util,
                })
                .collect();
            let util = take_samples(&samples, &mut self.last_seen[i]);
            let mut seen: Vec<u32> = memory.keys().copied().collect();
            seen.extend(util.keys().copied());
            seen.sort_unstable();
            seen.dedup();
            for pid in seen.into_iter().filter(|p| wanted.contains(p)) {
                let u = util.get(&pid);
                out.push(Use {
                    pid,
                    device: dev.uuid.clone(),
                    memory_bytes: memory.get(&pid).copied().unwrap_or(0),
                    sm_pct: u.map(|u| u.0),
                    mem_pct: u.map(|u| u.1),
                });
            }
        }
        out
    }
}

/// One DRM client as its fdinfo tells it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DrmClient {
    /// `drm-driver`.
    pub driver: String,
    /// `drm-pdev`: the device.
    pub pdev: String,
    /// `drm-client-id`: one per open DRM file (duplicated fds share it).
    pub client_id: u64,
    /// Per engine: busy nanoseconds (`drm-engine-<e>`), or busy cycles
    /// with the total cycles they are out of (`drm-cycles-<e>`,
    /// `drm-total-cycles-<e>`), and how many engines of it there are.
    pub engines: BTreeMap<String, Engine>,
    /// Memory it holds, bytes: the resident amounts where the driver gives
    /// them (`drm-resident-<region>`), else `drm-memory-<region>`.
    pub memory_bytes: u64,
}

/// One engine class's counter.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Engine {
    /// Busy time (ns) or busy cycles.
    pub busy: u64,
    /// For cycles: the total cycles elapsed (`None` for a time counter).
    pub total_cycles: Option<u64>,
    /// Engines of this class (`drm-engine-capacity-<e>`, 1 when absent).
    pub capacity: u64,
}

fn bytes_of(value: &str) -> Option<u64> {
    let mut parts = value.split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    let unit = match parts.next() {
        None => 1,
        Some("KiB") => 1024,
        Some("MiB") => 1024 * 1024,
        Some("GiB") => 1024 * 1024 * 1024,
        Some(_) => return None,
    };
    Some(n * unit)
}

/// Parses one fdinfo file; `None` when it is not a DRM client with usage
/// figures (nearly every fd).
pub fn parse_fdinfo(text: &str) -> Option<DrmClient> {
    let mut c = DrmClient::default();
    let (mut resident, mut memory) = (None::<u64>, None::<u64>);
    let mut capacity: BTreeMap<String, u64> = BTreeMap::new();
    let mut id = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        let Some(key) = key.strip_prefix("drm-") else {
            continue;
        };
        if key == "driver" {
            c.driver = value.to_owned();
        } else if key == "pdev" {
            c.pdev = value.to_owned();
        } else if key == "client-id" {
            id = value.parse().ok();
        } else if let Some(e) = key.strip_prefix("engine-capacity-") {
            capacity.insert(e.to_owned(), value.parse().unwrap_or(1));
        } else if let Some(e) = key.strip_prefix("engine-") {
            let ns = value.strip_suffix("ns").unwrap_or(value).trim();
            if let Ok(ns) = ns.parse() {
                c.engines.entry(e.to_owned()).or_default().busy = ns;
            }
        } else if let Some(e) = key.strip_prefix("total-cycles-") {
            if let Ok(t) = value.parse() {
                c.engines.entry(e.to_owned()).or_default().total_cycles = Some(t);
            }
        } else if let Some(e) = key.strip_prefix("cycles-") {
            if let Ok(b) = value.parse() {
                c.engines.entry(e.to_owned()).or_default().busy = b;
            }
        } else if key.starts_with("resident-") {
            *resident.get_or_insert(0) += bytes_of(value).unwrap_or(0);
        } else if key.starts_with("memory-") {
            *memory.get_or_insert(0) += bytes_of(value).unwrap_or(0);
        }
    }
    c.client_id = id?;
    if c.driver.is_empty() {
        return None;
    }
    for (name, e) in c.engines.iter_mut() {
        e.capacity = capacity.get(name).copied().unwrap_or(1).max(1);
    }
    c.memory_bytes = resident.or(memory).unwrap_or(0);
    Some(c)
}

/// The busiest engine's utilisation between two looks at one client,
/// percent of its capacity.
pub fn busiest(before: &DrmClient, now: &DrmClient, wall_ns: u64) -> Option<f64> {
    now.engines
        .iter()
        .filter_map(|(name, e)| {
            let b = before.engines.get(name)?;
            let busy = e.busy.checked_sub(b.busy)? as f64;
            let over = match (e.total_cycles, b.total_cycles) {
                (Some(t), Some(t0)) => t.checked_sub(t0)? as f64,
                (None, None) => wall_ns as f64,
                _ => return None,
            };
            (over > 0.0).then(|| (busy / over / e.capacity as f64 * 100.0).min(100.0))
        })
        .max_by(f64::total_cmp)
}

/// AMD and Intel (and any DRM driver with usage stats) through fdinfo.
pub struct Drm {
    devices: Vec<Device>,
    proc_root: PathBuf,
    /// Each client's previous look, and when (boottime ns).
    last: HashMap<(u32, String, u64), (DrmClient, u64)>,
}

impl Drm {
    /// A source when `dri` has a render node; `None` otherwise.
    pub fn open(dri: &Path) -> Option<Self> {
        let nodes = std::fs::read_dir(dri)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("renderD"))
            .count();
        (nodes > 0).then(|| Self {
            devices: Vec::new(),
            proc_root: PathBuf::from("/proc"),
            last: HashMap::new(),
        })
    }

    /// The DRM clients of `pid`, one per client id.
    fn clients(&self, pid: u32) -> Vec<DrmClient> {
        let fds = self.proc_root.join(pid.to_string()).join("fd");
        let Ok(dir) = std::fs::read_dir(&fds) else {
            return Vec::new();
        };
        let mut out: Vec<DrmClient> = Vec::new();
        for e in dir.filter_map(|e| e.ok()) {
            let is_drm = std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("/dev/dri/"));
            if !is_drm {
                continue;
            }
            let info = self
                .proc_root
                .join(pid.to_string())
                .join("fdinfo")
                .join(e.file_name());
            if let Some(c) = std::fs::read_to_string(info)
                .ok()
                .as_deref()
                .and_then(parse_fdinfo)
                && !out
                    .iter()
                    .any(|o| o.pdev == c.pdev && o.client_id == c.client_id)
            {
                out.push(c);
            }
        }
        out
    }
}

impl GpuSource for Drm {
    fn devices(&self) -> &[Device] {
        &self.devices
    }

    fn kind(&self) -> &'static str {
        "fdinfo"
    }

    fn sample(&mut self, now_ns: u64, pids: &[u32]) -> Vec<Use> {
        let mut out: BTreeMap<(u32, String), Use> = BTreeMap::new();
        let mut seen = HashMap::new();
        for &pid in pids {
            for c in self.clients(pid) {
                if !self.devices.iter().any(|d| d.uuid == c.pdev) {
                    self.devices.push(Device {
                        uuid: c.pdev.clone(),
                        name: c.driver.clone(),
                        driver: c.driver.clone(),
                        memory_total_bytes: None,
                        accounting: None,
                    });
                }
                let key = (pid, c.pdev.clone(), c.client_id);
                let pct = self
                    .last
                    .get(&key)
                    .and_then(|(b, at)| busiest(b, &c, now_ns.saturating_sub(*at)));
                let u = out.entry((pid, c.pdev.clone())).or_insert_with(|| Use {
                    pid,
                    device: c.pdev.clone(),
                    memory_bytes: 0,
                    sm_pct: None,
                    mem_pct: None,
                });
                u.memory_bytes += c.memory_bytes;
                if let Some(p) = pct {
                    u.sm_pct = Some(u.sm_pct.map_or(p, |q: f64| q.max(p)));
                }
                seen.insert(key, (c, now_ns));
            }
        }
        // Clients gone (closed, or their process ended) are dropped.
        self.last = seen;
        out.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Transcribed from the kernel's drm-usage-stats documentation and the
    // amdgpu, i915 and xe show_fdinfo code (no such GPU on the machines that
    // built this): the fields and units each driver prints.
    const AMDGPU: &str = "pos:\t0\nflags:\t02100002\nmnt_id:\t26\nino:\t1087\n\
drm-driver:\tamdgpu\ndrm-client-id:\t41\ndrm-pdev:\t0000:03:00.0\npasid:\t32771\n\
drm-memory-vram:\t1048576 KiB\ndrm-memory-gtt: \t2048 KiB\ndrm-memory-cpu: \t0 KiB\n\
amd-memory-visible-vram:\t0 KiB\namd-evicted-vram:\t0 KiB\n\
drm-engine-gfx:\t1500000000 ns\ndrm-engine-compute:\t250000000 ns\ndrm-engine-dma:\t0 ns\n";

    const AMDGPU_LATER: &str = "drm-driver:\tamdgpu\ndrm-client-id:\t41\ndrm-pdev:\t0000:03:00.0\n\
drm-total-vram:\t1048576 KiB\ndrm-resident-vram:\t524288 KiB\ndrm-total-gtt:\t2048 KiB\n\
drm-resident-gtt:\t2048 KiB\ndrm-engine-gfx:\t2250000000 ns\ndrm-engine-compute:\t250000000 ns\n";

    const I915: &str = "pos:\t0\nflags:\t0100002\nmnt_id:\t24\nino:\t1062\n\
drm-driver:\ti915\ndrm-client-id:\t7\ndrm-pdev:\t0000:00:02.0\n\
drm-total-system0:\t4096 KiB\ndrm-resident-system0:\t4096 KiB\n\
drm-engine-render:\t25662044495 ns\ndrm-engine-copy:\t0 ns\n\
drm-engine-video:\t1200000000 ns\ndrm-engine-capacity-video:\t2\ndrm-engine-video-enhance:\t0 ns\n";

    const XE: &str = "drm-driver:\txe\ndrm-client-id:\t3\ndrm-pdev:\t0000:00:02.0\n\
drm-total-gtt:\t16384 KiB\ndrm-resident-gtt:\t8192 KiB\n\
drm-cycles-rcs:\t28257900\ndrm-total-cycles-rcs:\t7655183225\n\
drm-cycles-ccs:\t0\ndrm-total-cycles-ccs:\t7655183225\ndrm-engine-capacity-ccs:\t4\n";

    #[test]
    fn amdgpu_fdinfo_gives_memory_and_engine_time() {
        let c = parse_fdinfo(AMDGPU).unwrap();
        assert_eq!((c.driver.as_str(), c.client_id), ("amdgpu", 41));
        assert_eq!(c.pdev, "0000:03:00.0");
        assert_eq!(c.memory_bytes, (1048576 + 2048) * 1024);
        assert_eq!(c.engines["gfx"].busy, 1_500_000_000);
        assert_eq!(c.engines.len(), 3);
        // Newer kernels: resident amounts are preferred.
        let later = parse_fdinfo(AMDGPU_LATER).unwrap();
        assert_eq!(later.memory_bytes, (524288 + 2048) * 1024);
        // 0.75 s of gfx in 1 s of wall time.
        assert_eq!(busiest(&c, &later, 1_000_000_000), Some(75.0));
    }

    #[test]
    fn i915_engines_are_divided_by_their_capacity() {
        let c = parse_fdinfo(I915).unwrap();
        assert_eq!(c.engines["video"].capacity, 2);
        assert_eq!(c.memory_bytes, 4096 * 1024);
        let mut later = c.clone();
        later.engines.get_mut("video").unwrap().busy += 1_000_000_000;
        later.engines.get_mut("render").unwrap().busy += 250_000_000;
        // video: 1 s busy over 1 s on 2 engines is 50 %; render 25 %.
        assert_eq!(busiest(&c, &later, 1_000_000_000), Some(50.0));
    }

    #[test]
    fn xe_cycles_are_over_the_total_cycles() {
        let c = parse_fdinfo(XE).unwrap();
        assert_eq!(c.engines["rcs"].total_cycles, Some(7655183225));
        assert_eq!(c.engines["ccs"].capacity, 4);
        assert_eq!(c.memory_bytes, 8192 * 1024);
        let mut later = c.clone();
        let rcs = later.engines.get_mut("rcs").unwrap();
        rcs.busy += 300;
        rcs.total_cycles = rcs.total_cycles.map(|t| t + 1000);
        let ccs = later.engines.get_mut("ccs").unwrap();
        ccs.busy += 2000;
        ccs.total_cycles = ccs.total_cycles.map(|t| t + 1000);
        // rcs 30 %; ccs 2000 of 4 × 1000 cycles: 50 %. Wall time is unused.
        assert_eq!(busiest(&c, &later, 0), Some(50.0));
    }

    #[test]
    fn other_fds_and_clients_without_stats_are_not_clients() {
        assert_eq!(
            parse_fdinfo("pos:\t0\nflags:\t02\nmnt_id:\t5\nino:\t9\n"),
            None
        );
        assert_eq!(parse_fdinfo("drm-driver:\tnouveau\n"), None, "no client id");
        let c = parse_fdinfo("drm-driver:\tv3d\ndrm-client-id:\t1\n").unwrap();
        assert_eq!((c.memory_bytes, c.engines.len()), (0, 0));
    }

    #[test]
    fn nvml_samples_are_taken_once_each_and_averaged() {
        // As nvmlDeviceGetProcessUtilization returns them: a buffer of the
        // driver's recent samples, stamped in µs, older ones repeated.
        let s = |pid, timestamp, sm, mem| UtilSample {
            pid,
            timestamp,
            sm,
            mem,
        };
        let first = [
            s(100, 1_000, 90, 40),
            s(100, 1_166, 70, 20),
            s(200, 1_100, 0, 0),
        ];
        let mut last = 0;
        let got = take_samples(&first, &mut last);
        assert_eq!(last, 1_166);
        assert_eq!(got[&100], (80.0, 30.0));
        assert_eq!(got[&200], (0.0, 0.0));
        // The next call's buffer still holds 1_166; only what is newer counts.
        let second = [s(100, 1_166, 70, 20), s(100, 1_333, 50, 10)];
        let got = take_samples(&second, &mut last);
        assert_eq!(got[&100], (50.0, 10.0));
        assert_eq!(last, 1_333);
        assert!(take_samples(&second, &mut last).is_empty());
    }

    #[test]
    fn without_a_driver_there_is_no_source_and_the_reason_is_given() {
        // This machine has no NVIDIA driver and no /dev/dri (CI's kind).
        if Path::new("/dev/dri").exists() || Path::new("/dev/nvidiactl").exists() {
            return;
        }
        let e = open().err().expect("no GPU source here");
        assert!(e.contains("NVML") && e.contains("/dev/dri"), "{e}");
        assert!(Drm::open(Path::new("/nonexistent")).is_none());
    }
}
