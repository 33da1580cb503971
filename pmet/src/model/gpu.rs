//! A process's GPU use over its life, summed from the looks of a GPU source
//! ([`crate::collect::gpu`]).

use crate::collect::gpu::Use;

/// What one process did on the GPUs, from every look that saw it there.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuUse {
    /// The devices it used (UUIDs or PCI addresses), in the order seen.
    pub devices: Vec<String>,
    /// The most GPU memory it held at one look (all devices together).
    pub memory_peak_bytes: u64,
    sm_sum: f64,
    /// Looks at which it held a GPU context.
    pub looks: u32,
    /// Its highest SM (or busiest engine) utilisation, percent.
    pub sm_pct_max: f64,
    mem_sum: f64,
    mem_looks: u32,
    /// SM-utilisation-weighted seconds: the seconds of a whole GPU its use
    /// adds up to.
    pub busy_s: f64,
    /// Its memory peak and utilisation are the driver's lifetime figures
    /// (NVML accounting mode), not sampled.
    pub accounting: bool,
    /// At the last look: the memory it held and its SM utilisation
    /// (percent), 0 when it was not seen there.
    pub now: (u64, f64),
}

impl GpuUse {
    /// Takes in one look (`uses`: its rows on each device) covering `dt_s`
    /// seconds since the previous one.
    pub fn look(&mut self, uses: &[&Use], dt_s: f64) {
        if uses.is_empty() {
            return;
        }
        let mut memory = 0;
        let (mut sm, mut mem, mut mem_known) = (0.0f64, 0.0f64, false);
        for u in uses {
            if !self.devices.contains(&u.device) {
                self.devices.push(u.device.clone());
            }
            memory += u.memory_bytes;
            // Several devices: the process's share of one GPU's worth.
            sm += u.sm_pct.unwrap_or(0.0);
            if let Some(m) = u.mem_pct {
                mem += m;
                mem_known = true;
            }
        }
        self.memory_peak_bytes = self.memory_peak_bytes.max(memory);
        self.now = (memory, sm);
        self.looks += 1;
        self.sm_sum += sm;
        self.sm_pct_max = self.sm_pct_max.max(sm);
        self.busy_s += sm / 100.0 * dt_s;
        if mem_known {
            self.mem_sum += mem;
            self.mem_looks += 1;
        }
    }

    /// Mean SM utilisation over the looks that saw it on a GPU, percent (0
    /// for a process never seen there).
    pub fn sm_pct_mean(&self) -> f64 {
        if self.looks == 0 {
            0.0
        } else {
            self.sm_sum / f64::from(self.looks)
        }
    }

    /// Mean memory-controller utilisation, percent; `None` where the
    /// driver gives none (DRM).
    pub fn mem_pct_mean(&self) -> Option<f64> {
        if self.looks == 0 {
            return Some(0.0);
        }
        (self.mem_looks > 0).then(|| self.mem_sum / f64::from(self.mem_looks))
    }

    /// The driver's lifetime figures replace the sampled ones.
    pub fn lifetime(&mut self, device: &str, memory_peak: Option<u64>, sm_pct: Option<f64>) {
        if !self.devices.iter().any(|d| d == device) {
            self.devices.push(device.to_owned());
        }
        if let Some(m) = memory_peak {
            self.memory_peak_bytes = self.memory_peak_bytes.max(m);
        }
        if let Some(s) = sm_pct {
            self.sm_sum = s * f64::from(self.looks.max(1));
            self.looks = self.looks.max(1);
        }
        self.accounting = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(device: &str, memory: u64, sm: Option<f64>, mem: Option<f64>) -> Use {
        Use {
            pid: 1,
            device: device.into(),
            memory_bytes: memory,
            sm_pct: sm,
            mem_pct: mem,
        }
    }

    #[test]
    fn looks_add_up_to_peak_mean_max_and_busy_seconds() {
        let mut g = GpuUse::default();
        g.look(&[&u("GPU-a", 1 << 30, Some(80.0), Some(30.0))], 1.0);
        g.look(&[&u("GPU-a", 3 << 29, None, None)], 0.5);
        g.look(
            &[
                &u("GPU-a", 1 << 30, Some(40.0), Some(10.0)),
                &u("GPU-b", 1 << 20, Some(20.0), None),
            ],
            2.0,
        );
        assert_eq!(g.devices, ["GPU-a", "GPU-b"]);
        assert_eq!(g.memory_peak_bytes, 3 << 29, "the most at one look");
        assert_eq!(g.looks, 3);
        assert_eq!(g.sm_pct_mean(), (80.0 + 0.0 + 60.0) / 3.0);
        assert_eq!(g.sm_pct_max, 80.0);
        assert_eq!(g.mem_pct_mean(), Some(20.0));
        assert_eq!(g.busy_s, 0.8 * 1.0 + 0.6 * 2.0);
        let idle = GpuUse::default();
        assert_eq!(
            (idle.sm_pct_mean(), idle.mem_pct_mean(), idle.busy_s),
            (0.0, Some(0.0), 0.0)
        );
    }
}
