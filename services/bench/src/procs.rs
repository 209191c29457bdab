//! CPU time and memory of the processes a figure depends on: the bench client
//! itself, each service, the broker and PostgreSQL (the postmaster and every
//! backend), read from /proc. On 2 cores they compete, so every figure comes
//! with the CPU split between them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Map, Value, json};

use crate::stats::round3;

/// The parts whose CPU is reported, in print order.
pub const PARTS: [&str; 7] = [
    "client",
    "ingest",
    "processor",
    "query",
    "admin",
    "broker",
    "postgres",
];

/// Where the deployment's pid files are.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub state_dir: PathBuf,
}

impl Deployment {
    fn pid_file(&self, part: &str) -> PathBuf {
        self.state_dir.join("run").join(format!("{part}.pid"))
    }

    /// The pid of a deployed part (first line of its pid file), if it runs.
    pub fn pid(&self, part: &str) -> Option<u32> {
        if part == "client" {
            return Some(std::process::id());
        }
        let file = if part == "postgres" {
            self.state_dir
                .join("postgres")
                .join("data")
                .join("postmaster.pid")
        } else {
            self.pid_file(part)
        };
        let text = std::fs::read_to_string(file).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// The pids of a part: for PostgreSQL the postmaster and its children.
    fn pids(&self, part: &str) -> Vec<u32> {
        let Some(pid) = self.pid(part) else {
            return Vec::new();
        };
        let mut pids = vec![pid];
        if part == "postgres" {
            pids.extend(children_of(pid));
        }
        pids
    }

    /// CPU ticks and memory of every part now.
    pub fn snapshot(&self) -> Snapshot {
        let mut parts = BTreeMap::new();
        for part in PARTS {
            let mut usage = Usage::default();
            for pid in self.pids(part) {
                if let Some(ticks) = cpu_ticks(pid) {
                    usage.ticks += ticks;
                    usage.pss_kib += pss_kib(pid).unwrap_or(0);
                    usage.running = true;
                }
            }
            parts.insert(part, usage);
        }
        Snapshot {
            at: Instant::now(),
            parts,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    /// utime + stime, in clock ticks.
    ticks: u64,
    /// Proportional set size: shared pages split between their users, so
    /// PostgreSQL's shared buffers are not counted once per backend.
    pss_kib: u64,
    running: bool,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    parts: BTreeMap<&'static str, Usage>,
}

/// The linux USER_HZ: /proc reports CPU times in these ticks.
const TICKS_PER_SECOND: f64 = 100.0;

impl Snapshot {
    /// CPU seconds each part used since `earlier`, and the wall time, as JSON:
    /// `{"wall_s": .., "client_s": .., "ingest_s": .., ...}`.
    pub fn cpu_since(&self, earlier: &Snapshot) -> Value {
        let wall = self.at.duration_since(earlier.at).as_secs_f64();
        let mut out = Map::new();
        out.insert("wall_s".into(), json!(round3(wall)));
        for (part, now) in &self.parts {
            let before = earlier.parts.get(part).map(|u| u.ticks).unwrap_or(0);
            let secs = now.ticks.saturating_sub(before) as f64 / TICKS_PER_SECOND;
            out.insert(format!("{part}_s"), json!(round3(secs)));
        }
        Value::Object(out)
    }

    /// Memory of each running part in MiB.
    pub fn memory_mib(&self, part: &str) -> Option<f64> {
        let u = self.parts.get(part)?;
        u.running.then(|| round3(u.pss_kib as f64 / 1024.0))
    }
}

/// "client 0.8 s, ingest 3.1 s, ..." of a `cpu_since` object, for the tables.
pub fn cpu_line(cpu: &Value) -> String {
    let wall = cpu["wall_s"].as_f64().unwrap_or(0.0);
    let mut parts = Vec::new();
    for part in PARTS {
        let s = cpu[format!("{part}_s")].as_f64().unwrap_or(0.0);
        if s >= 0.05 {
            let pct = if wall > 0.0 { 100.0 * s / wall } else { 0.0 };
            parts.push(format!("{part} {pct:.0}%"));
        }
    }
    parts.join(", ")
}

/// CPU seconds (user + system) a process has used so far (0 when gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    cpu_ticks(pid).map_or(0.0, |t| t as f64 / TICKS_PER_SECOND)
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| parent_of(pid) == Some(parent))
        .collect()
}

/// The broker's storage engine, read off its command line
/// (`--storage-engine memory://...` or `postgres://...`) or its environment
/// (`STORAGE_ENGINE`, where deploy.sh puts it: the URL holds a password).
pub fn broker_engine(deployment: &Deployment) -> String {
    let Some(pid) = deployment.pid("broker") else {
        return "unknown (no local broker)".into();
    };
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return "unknown".into();
    };
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let engine = args
        .iter()
        .position(|a| a == "--storage-engine")
        .and_then(|i| args.get(i + 1))
        .or_else(|| {
            args.iter()
                .find(|a| a.starts_with("memory://") || a.starts_with("postgres://"))
        })
        .cloned()
        .or_else(|| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            environ
                .split(|&b| b == 0)
                .find_map(|v| v.strip_prefix(b"STORAGE_ENGINE="))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        });
    match engine {
        Some(e) if e.starts_with("memory") => "memory".into(),
        Some(e) if e.starts_with("postgres") => "postgres".into(),
        Some(e) => e.split(':').next().unwrap_or("unknown").into(),
        None => "unknown".into(),
    }
}

/// Memory and CPU of each part at the end of a load (`during` names it).
pub fn footprint_json(now: &Snapshot, cpu: &Value, during: &str) -> Value {
    let wall = cpu["wall_s"].as_f64().unwrap_or(0.0);
    let mut services = Vec::new();
    let mut table = crate::stats::Table::new(&["part", "memory (PSS) MiB", "CPU % of one core"]);
    for part in [
        "ingest",
        "processor",
        "query",
        "admin",
        "broker",
        "postgres",
        "client",
    ] {
        let Some(mib) = now.memory_mib(part) else {
            continue;
        };
        let secs = cpu[format!("{part}_s")].as_f64().unwrap_or(0.0);
        let pct = if wall > 0.0 { 100.0 * secs / wall } else { 0.0 };
        table.row(vec![part.into(), format!("{mib:.1}"), format!("{pct:.0}")]);
        services.push(json!({ "name": part, "rss_mib": mib, "cpu_pct": round3(pct) }));
    }
    println!("\n## Footprint during {during}\n\n{}\n", table.render());
    json!({ "during": during, "services": services })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_measured() {
        let d = Deployment {
            state_dir: PathBuf::from("/nonexistent"),
        };
        let before = d.snapshot();
        // Burn a little CPU so the client's ticks can only grow.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        let after = d.snapshot();
        let cpu = after.cpu_since(&before);
        assert!(cpu["client_s"].as_f64().unwrap_or(-1.0) >= 0.0);
        assert!(after.memory_mib("client").unwrap_or(0.0) > 0.0);
        assert_eq!(after.memory_mib("ingest"), None);
    }
}
