//! Whether this node takes new work: the drain switch and the CPU-load
//! threshold (`[media] max-cpu-percent`). The count limit
//! (`[media] max-calls`) lives with the calls it counts, in the call
//! registry; the API and the SIP side ask both before a new call.
//!
//! The CPU load is the whole machine's, read from `/proc/stat` by a driver
//! once a second and averaged here over [`CPU_WINDOW`] samples: the relay
//! shares the machine's cores with everything else on it, and a gateway
//! short of CPU degrades every call it carries, whoever uses the cores.
//! [`CpuLoad`] takes the counters as input, so tests feed it made-up ones.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tokio::sync::Notify;

/// Samples averaged for the CPU load (one a second: the last 5 s).
pub const CPU_WINDOW: usize = 5;

/// Why a new call (or session) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the gateway is draining for a restart; try another node")]
    Draining,
    #[error("the machine's CPU is {busy}% busy (media.max-cpu-percent = {limit})")]
    CpuBusy { busy: u32, limit: u32 },
}

impl Refusal {
    /// The reason label of `gateway_calls_refused_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Draining => "draining",
            Refusal::CpuBusy { .. } => "cpu",
        }
    }
}

/// The node's admission state, shared by the API, the SIP side and the
/// load sampler.
#[derive(Debug)]
pub struct Admission {
    draining: AtomicBool,
    drain_started: Notify,
    /// Busy share of all cores over the window, in tenths of a percent
    /// (`u32::MAX` until a window has been seen).
    cpu_busy_permille: AtomicU32,
    /// 0: no CPU threshold.
    max_cpu_percent: u32,
}

impl Admission {
    pub fn new(max_cpu_percent: u32) -> Self {
        Admission {
            draining: AtomicBool::new(false),
            drain_started: Notify::new(),
            cpu_busy_permille: AtomicU32::new(u32::MAX),
            max_cpu_percent,
        }
    }

    /// A new call may start (draining and the CPU threshold; the call
    /// count is the registry's).
    pub fn check_call(&self) -> Result<(), Refusal> {
        self.check_session()?;
        match self.cpu_busy_percent() {
            Some(busy) if self.max_cpu_percent > 0 && busy >= self.max_cpu_percent => {
                Err(Refusal::CpuBusy {
                    busy,
                    limit: self.max_cpu_percent,
                })
            }
            _ => Ok(()),
        }
    }

    /// A new session may open: only a drain stops that (a session costs
    /// next to nothing until it calls).
    pub fn check_session(&self) -> Result<(), Refusal> {
        if self.is_draining() {
            Err(Refusal::Draining)
        } else {
            Ok(())
        }
    }

    /// Starts the drain; true the first time.
    pub fn start_drain(&self) -> bool {
        let first = !self.draining.swap(true, Ordering::SeqCst);
        if first {
            // notify_one keeps the permit if nobody waits yet.
            self.drain_started.notify_one();
            self.drain_started.notify_waiters();
        }
        first
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Resolves once a drain has been asked for (at once if it has).
    pub async fn drain_requested(&self) {
        loop {
            let started = self.drain_started.notified();
            if self.is_draining() {
                return;
            }
            started.await;
        }
    }

    /// The averaged CPU load, from the sampler.
    pub fn note_cpu_busy(&self, permille: u32) {
        self.cpu_busy_permille
            .store(permille.min(1000), Ordering::Relaxed);
    }

    /// The machine's CPU busy share in percent, once measured.
    pub fn cpu_busy_percent(&self) -> Option<u32> {
        match self.cpu_busy_permille.load(Ordering::Relaxed) {
            u32::MAX => None,
            permille => Some(permille / 10),
        }
    }
}

/// The machine's CPU time counters (all cores, in clock ticks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// Reads the `cpu` line of `/proc/stat`: user nice system idle iowait
/// irq softirq steal …; idle and iowait are idle time, the rest busy.
/// Guest time is counted in user already, so it is not added again.
pub fn parse_proc_stat(text: &str) -> Result<CpuTimes, String> {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("cpu"))
        .ok_or("no \"cpu\" line")?;
    let fields = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse::<u64>().map_err(|_| format!("bad counter {f:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    if fields.len() < 4 {
        return Err(format!(
            "{} counters on the cpu line, not 4 or more",
            fields.len()
        ));
    }
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    let total: u64 = fields.iter().sum();
    Ok(CpuTimes {
        busy: total - idle,
        total,
    })
}

/// The busy share over the last [`CPU_WINDOW`] intervals, from samples of
/// the counters taken at a steady pace.
#[derive(Debug, Default)]
pub struct CpuLoad {
    samples: VecDeque<CpuTimes>,
}

impl CpuLoad {
    /// Takes a sample; gives the busy share in tenths of a percent once
    /// two samples are known. A counter that went backwards (it cannot,
    /// short of a bad read) starts the window afresh.
    pub fn sample(&mut self, now: CpuTimes) -> Option<u32> {
        if let Some(last) = self.samples.back() {
            if now.total < last.total || now.busy < last.busy {
                self.samples.clear();
            }
        }
        self.samples.push_back(now);
        while self.samples.len() > CPU_WINDOW + 1 {
            self.samples.pop_front();
        }
        let first = self.samples.front()?;
        let total = now.total - first.total;
        if total == 0 {
            return None;
        }
        let busy = now.busy - first.busy;
        Some(((busy.min(total) * 1000) / total) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 5 50 800 20 3 2 0 0 0\n\
                        cpu0 50 2 25 400 10 1 1 0 0 0\n\
                        intr 1234\n";

    #[test]
    fn proc_stat_counts_idle_and_iowait_as_idle() {
        let t = parse_proc_stat(STAT).unwrap();
        assert_eq!(t.total, 980);
        assert_eq!(t.busy, 160);
    }

    #[test]
    fn a_bad_proc_stat_is_an_error_naming_what_is_wrong() {
        assert_eq!(parse_proc_stat("intr 1\n").unwrap_err(), "no \"cpu\" line");
        let bad = parse_proc_stat("cpu 1 2 x 4\n").unwrap_err();
        assert!(bad.contains("\"x\""), "{bad}");
        assert!(parse_proc_stat("cpu 1 2\n")
            .unwrap_err()
            .contains("2 counters"));
    }

    #[test]
    fn the_load_is_the_busy_share_over_the_window() {
        let mut load = CpuLoad::default();
        let mut t = CpuTimes::default();
        assert_eq!(load.sample(t), None);
        assert_eq!(load.sample(t), None, "no time passed");
        // One second of 2 cores at 25 %.
        t.busy += 50;
        t.total += 200;
        assert_eq!(load.sample(t), Some(250));
        // Then fully busy, a sample a second: the average climbs …
        let mut seen = Vec::new();
        for _ in 0..CPU_WINDOW {
            t.busy += 200;
            t.total += 200;
            seen.push(load.sample(t).unwrap());
        }
        // (the window still holds the two samples of no time at first)
        assert_eq!(seen, [625, 750, 812, 850, 1000]);
        // … and quiet seconds push the busy ones out.
        for _ in 0..CPU_WINDOW - 1 {
            t.total += 200;
            load.sample(t);
        }
        t.total += 200;
        assert_eq!(load.sample(t), Some(0));
    }

    #[test]
    fn counters_going_back_start_the_window_again() {
        let mut load = CpuLoad::default();
        load.sample(CpuTimes {
            busy: 500,
            total: 1000,
        });
        load.sample(CpuTimes {
            busy: 900,
            total: 1400,
        });
        assert_eq!(
            load.sample(CpuTimes {
                busy: 10,
                total: 20
            }),
            None
        );
        assert_eq!(
            load.sample(CpuTimes {
                busy: 20,
                total: 120
            }),
            Some(100)
        );
    }

    #[test]
    fn the_threshold_refuses_calls_but_not_sessions() {
        let gate = Admission::new(80);
        assert_eq!(gate.check_call(), Ok(()), "nothing measured yet");
        gate.note_cpu_busy(799);
        assert_eq!(gate.check_call(), Ok(()));
        gate.note_cpu_busy(812);
        assert_eq!(
            gate.check_call(),
            Err(Refusal::CpuBusy {
                busy: 81,
                limit: 80
            })
        );
        assert_eq!(gate.check_session(), Ok(()));
        let off = Admission::new(0);
        off.note_cpu_busy(1000);
        assert_eq!(off.check_call(), Ok(()));
    }

    #[test]
    fn a_drain_refuses_sessions_and_calls_and_starts_once() {
        let gate = Admission::new(0);
        assert!(gate.start_drain());
        assert!(!gate.start_drain());
        assert_eq!(gate.check_session(), Err(Refusal::Draining));
        assert_eq!(gate.check_call(), Err(Refusal::Draining));
    }

    #[tokio::test]
    async fn a_drain_asked_before_anyone_waits_is_not_missed() {
        let gate = std::sync::Arc::new(Admission::new(0));
        gate.start_drain();
        tokio::time::timeout(std::time::Duration::from_secs(1), gate.drain_requested())
            .await
            .expect("resolves at once");
        let later = std::sync::Arc::new(Admission::new(0));
        let waiter = tokio::spawn({
            let later = later.clone();
            async move { later.drain_requested().await }
        });
        tokio::task::yield_now().await;
        later.start_drain();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
