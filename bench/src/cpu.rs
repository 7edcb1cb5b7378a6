//! CPU time per process, read from `/proc`, so that every run shows where the cost of a
//! command went: PostgreSQL (every backend and the postmaster, with the time of backends
//! that exited, which the postmaster has reaped), Redis, the bench's broker, this process (colloquy
//! and the bench's clients in the `dev` layout, the clients alone in the `split` one) and
//! each colloquy child process of the `split` layout. With it, the context switches of each
//! kind's threads (`/proc/<pid>/task/*/status`): every time a thread waited for a socket, a
//! lock or a core, which on busy cores is where a request's latency goes.

use std::collections::BTreeMap;
use std::time::Duration;

/// Seconds of CPU (user + system) and context switches so far per kind of process at one
/// instant.
#[derive(Debug, Clone, Default)]
pub struct CpuSample {
    seconds: BTreeMap<String, f64>,
    switches: BTreeMap<String, u64>,
}

/// What the bench's own process and its children are called in the figures.
#[derive(Debug, Clone)]
pub struct Labels {
    /// This process.
    pub me: String,
    /// Child processes by pid.
    pub children: Vec<(u32, String)>,
}

/// The process kind of a `/proc/<pid>/comm`, if the bench counts it.
fn kind(comm: &str, pid: u32, labels: &Labels) -> Option<String> {
    if pid == std::process::id() {
        return Some(labels.me.clone());
    }
    if let Some((_, label)) = labels.children.iter().find(|(child, _)| *child == pid) {
        return Some(label.clone());
    }
    match comm {
        "postgres" => Some("postgres".into()),
        "redis-server" => Some("redis".into()),
        // The broker is the bench's own child (see broker.rs): another broker on the machine
        // does not serve this run.
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

/// Voluntary plus involuntary context switches in a `/proc/<pid>/task/<tid>/status`.
fn switches(status: &str) -> u64 {
    status
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            matches!(name, "voluntary_ctxt_switches" | "nonvoluntary_ctxt_switches")
                .then(|| value.trim().parse::<u64>().ok())?
        })
        .sum()
}

/// The context switches of every live thread of `pid` (a thread that ended takes its count
/// with it: long-lived processes only).
fn process_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .map(|status| switches(&status))
        .sum()
}

impl CpuSample {
    /// Now.
    pub fn take(labels: &Labels) -> Self {
        let per_tick = 1.0 / ticks_per_second();
        let mut seconds: BTreeMap<String, f64> = BTreeMap::new();
        let mut switched: BTreeMap<String, u64> = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir("/proc") else { return Self::default() };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let Some(kind) = kind(comm.trim(), pid, labels) else { continue };
            let Some(t) = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| ticks(&s)) else {
                continue;
            };
            *switched.entry(kind.clone()).or_default() += process_switches(pid);
            *seconds.entry(kind).or_default() += t as f64 * per_tick;
        }
        Self { seconds, switches: switched }
    }

    /// Context switches per unit of work (`count` of them) between `self` and `later`, of
    /// the kinds `wanted` says, highest first.
    pub fn switches_per_unit(&self, later: &Self, count: u64, wanted: impl Fn(&str) -> bool) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = later
            .switches
            .iter()
            .filter(|(kind, _)| wanted(kind))
            .map(|(kind, after)| {
                let made = after.saturating_sub(self.switches.get(kind).copied().unwrap_or(0));
                (kind.clone(), made as f64 / count.max(1) as f64)
            })
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }

    /// CPU milliseconds per unit of work (`count` of them) between `self` and `later`,
    /// highest first, with the share of the elapsed wall time (`cores` = 1.0 is one core
    /// busy all along).
    pub fn per_unit(&self, later: &Self, count: u64, elapsed: Duration) -> Vec<(String, f64, f64)> {
        let mut out: Vec<(String, f64, f64)> = later
            .seconds
            .iter()
            .map(|(kind, after)| {
                let spent = (after - self.seconds.get(kind).copied().unwrap_or(0.0)).max(0.0);
                (kind.clone(), spent * 1_000.0 / count.max(1) as f64, spent / elapsed.as_secs_f64().max(1e-9))
            })
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }
}

/// One line: `postgres 0.97 ms (1.2 cores), ...`.
pub fn describe(per_unit: &[(String, f64, f64)]) -> String {
    let parts: Vec<String> =
        per_unit.iter().map(|(kind, ms, cores)| format!("{kind} {ms:.3} ms ({cores:.2} cores)")).collect();
    let total: f64 = per_unit.iter().map(|(_, ms, _)| ms).sum();
    format!("{} = {total:.3} ms", parts.join(", "))
}

/// One line: `serve 9.1, serve 8.7, relay 0.4`.
pub fn describe_switches(per_unit: &[(String, f64)]) -> String {
    per_unit.iter().map(|(kind, n)| format!("{kind} {n:.1}")).collect::<Vec<_>>().join(", ")
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
    fn children_are_counted_under_their_label_and_strangers_not_at_all() {
        let labels = Labels { me: "bench clients".into(), children: vec![(42, "relay".into())] };
        assert_eq!(kind("colloquy", 42, &labels).as_deref(), Some("relay"));
        assert_eq!(kind("colloquy", 43, &labels), None, "another colloquy on the machine is not ours");
        assert_eq!(kind("x", std::process::id(), &labels).as_deref(), Some("bench clients"));
        assert_eq!(kind("postgres", 44, &labels).as_deref(), Some("postgres"));
    }

    #[test]
    fn cost_is_divided_by_the_work_done() {
        let sample = |pairs: &[(&str, f64)]| CpuSample {
            seconds: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            switches: BTreeMap::new(),
        };
        let before = sample(&[("postgres", 1.0), ("bench", 2.0)]);
        let after = sample(&[("postgres", 3.0), ("bench", 2.5), ("redis", 0.1)]);
        let per = before.per_unit(&after, 1_000, Duration::from_secs(2));
        assert_eq!(per[0].0, "postgres");
        assert!((per[0].1 - 2.0).abs() < 1e-9 && (per[0].2 - 1.0).abs() < 1e-9);
        assert!((per[1].1 - 0.5).abs() < 1e-9);
        assert!((per[2].1 - 0.1).abs() < 1e-9, "a process that appeared counts from zero");
    }

    #[test]
    fn context_switches_are_both_kinds_per_unit_of_the_wanted_processes() {
        let status = "Name:\tcolloquy\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(switches(status), 127);
        assert_eq!(switches("Name:\tx\n"), 0);
        assert!(process_switches(std::process::id()) > 0, "this test's own threads have switched");
        let sample = |pairs: &[(&str, u64)]| CpuSample {
            seconds: BTreeMap::new(),
            switches: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        };
        let before = sample(&[("serve", 100), ("postgres", 50)]);
        let after = sample(&[("serve", 1_100), ("postgres", 2_050), ("relay", 30)]);
        let per = before.switches_per_unit(&after, 100, |kind| kind != "postgres");
        assert_eq!(per, vec![("serve".to_string(), 10.0), ("relay".to_string(), 0.3)]);
    }
}
