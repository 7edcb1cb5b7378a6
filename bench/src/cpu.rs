//! CPU time per process, read from `/proc`, so that every run shows where the cost of a
//! command went: PostgreSQL (every backend and the postmaster, with the time of backends
//! that exited, which the postmaster has reaped), Redis, the broker, and this process
//! (colloquy and, in the same process, the bench's own clients).

use std::collections::BTreeMap;
use std::time::Duration;

/// Seconds of CPU (user + system) per kind of process at one instant.
#[derive(Debug, Clone, Default)]
pub struct CpuSample(BTreeMap<&'static str, f64>);

/// This process.
pub const SELF: &str = "colloquy + bench clients";

/// The process kind of a `/proc/<pid>/comm`, if the bench counts it.
fn kind(comm: &str, pid: u32, me: u32) -> Option<&'static str> {
    if pid == me {
        return Some(SELF);
    }
    match comm {
        "postgres" => Some("postgres"),
        "redis-server" => Some("redis"),
        c if c.starts_with("tansu") => Some("broker (tansu)"),
        _ => None,
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when it cannot be asked).
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime + cutime + cstime of a `/proc/<pid>/stat` line, in ticks.
fn ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 to 17 of the line (state is field 3): here 11 to 14.
    let sum = fields.get(11..15)?.iter().map(|f| f.parse::<u64>().ok()).sum::<Option<u64>>()?;
    Some(sum)
}

impl CpuSample {
    /// Now.
    pub fn take() -> Self {
        let me = std::process::id();
        let per_tick = 1.0 / ticks_per_second();
        let mut seconds: BTreeMap<&'static str, f64> = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir("/proc") else { return Self(seconds) };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let Some(kind) = kind(comm.trim(), pid, me) else { continue };
            let Some(t) = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| ticks(&s)) else {
                continue;
            };
            *seconds.entry(kind).or_default() += t as f64 * per_tick;
        }
        Self(seconds)
    }

    /// CPU milliseconds per unit of work (`count` of them) between `self` and `later`,
    /// highest first, with the share of the elapsed wall time (`cores` = 1.0 is one core
    /// busy all along).
    pub fn per_unit(&self, later: &Self, count: u64, elapsed: Duration) -> Vec<(&'static str, f64, f64)> {
        let mut out: Vec<(&'static str, f64, f64)> = later
            .0
            .iter()
            .map(|(kind, after)| {
                let spent = (after - self.0.get(kind).copied().unwrap_or(0.0)).max(0.0);
                (*kind, spent * 1_000.0 / count.max(1) as f64, spent / elapsed.as_secs_f64().max(1e-9))
            })
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }
}

/// One line: `postgres 0.97 ms (1.2 cores), ...`.
pub fn describe(per_unit: &[(&'static str, f64, f64)]) -> String {
    let parts: Vec<String> =
        per_unit.iter().map(|(kind, ms, cores)| format!("{kind} {ms:.3} ms ({cores:.2} cores)")).collect();
    let total: f64 = per_unit.iter().map(|(_, ms, _)| ms).sum();
    format!("{} = {total:.3} ms", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_are_read() {
        let line = "42 (postgres: a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 1 0 1 0 0";
        assert_eq!(ticks(line), Some(7 + 3 + 2 + 1));
        assert_eq!(ticks("garbage"), None);
    }

    #[test]
    fn cost_is_divided_by_the_work_done() {
        let before = CpuSample(BTreeMap::from([("postgres", 1.0), (SELF, 2.0)]));
        let after = CpuSample(BTreeMap::from([("postgres", 3.0), (SELF, 2.5), ("redis", 0.1)]));
        let per = before.per_unit(&after, 1_000, Duration::from_secs(2));
        assert_eq!(per[0].0, "postgres");
        assert!((per[0].1 - 2.0).abs() < 1e-9 && (per[0].2 - 1.0).abs() < 1e-9);
        assert!((per[1].1 - 0.5).abs() < 1e-9);
        assert!((per[2].1 - 0.1).abs() < 1e-9, "a process that appeared counts from zero");
    }
}
