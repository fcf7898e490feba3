//! The child processes of `splitnas compare`: each search and training runs as
//! `splitnas search ...` / `splitnas train ...` with its wall time, CPU time and peak
//! memory (`wait4`) its own; a finished child leaves `result.json` and is skipped, an
//! interrupted one is continued with `--resume`.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use splitnas_search::checkpoint::write_atomic;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Wall time, CPU time and peak memory of one child (summed / maxed over resumed
/// pieces). CPU time (user + system) does not grow when other work shares the machine.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ChildCost {
    pub seconds: f64,
    #[serde(default)]
    pub cpu_seconds: f64,
    pub peak_rss_mb: f64,
}

/// A finished training run (`result.json` in its directory).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainResult {
    pub test_acc: f64,
    pub parameters: usize,
    pub cost: ChildCost,
}

/// Runs `exe args`, stdout and stderr appended to `log`; returns its wall time and peak RSS.
fn child(exe: &Path, args: &[String], log: &Path) -> Result<ChildCost> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = file.try_clone()?;
    let t0 = Instant::now();
    let mut proc = Command::new(exe)
        .args(args)
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err))
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let pid = proc.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: plain FFI call; `usage` is a valid, zeroed out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = t0.elapsed().as_secs_f64();
    if rc != pid {
        // wait4 failed: fall back to std's wait (no memory figure).
        let st = proc.wait()?;
        if !st.success() {
            bail!(
                "`splitnas {}` failed ({st}); see {}",
                args.join(" "),
                log.display()
            );
        }
        return Ok(ChildCost {
            seconds,
            ..ChildCost::default()
        });
    }
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !ok {
        let tail: String = std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        let how = if libc::WIFEXITED(status) {
            format!("exit code {}", libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            format!("killed by signal {}", libc::WTERMSIG(status))
        } else {
            format!("wait status {status}")
        };
        bail!(
            "`splitnas {}` failed ({how}); log {}:\n{tail}",
            args.join(" "),
            log.display()
        );
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Ok(ChildCost {
        seconds,
        cpu_seconds: tv(usage.ru_utime) + tv(usage.ru_stime),
        // Linux reports ru_maxrss in KiB.
        peak_rss_mb: usage.ru_maxrss as f64 / 1024.0,
    })
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

pub fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    write_atomic(path, text.as_bytes()).map_err(anyhow::Error::from)
}

/// Runs a child into `dir` unless `dir/result.json` says it finished; continues it with
/// `--resume` when it left a checkpoint. Returns the accumulated cost.
pub fn run_once(exe: &Path, mut args: Vec<String>, dir: &Path, log: &Path) -> Result<ChildCost> {
    let cost_file = dir.join("compare_cost.json");
    let mut cost: ChildCost = read_json(&cost_file).unwrap_or_default();
    if dir.join("checkpoint.json").exists() {
        args.push("--resume".into());
    } else if dir.exists() {
        // Started but never checkpointed: nothing to keep.
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        cost = ChildCost::default();
    }
    let c = child(exe, &args, log)?;
    cost.seconds += c.seconds;
    cost.cpu_seconds += c.cpu_seconds;
    cost.peak_rss_mb = cost.peak_rss_mb.max(c.peak_rss_mb);
    write_json(&cost_file, &cost)?;
    Ok(cost)
}

/// Test accuracy (last epoch of metrics.jsonl) and parameters (the child's final line).
pub fn read_train(dir: &Path, log: &Path, cost: ChildCost) -> Result<TrainResult> {
    let metrics = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics)
        .with_context(|| format!("reading {}", metrics.display()))?;
    let last: serde_json::Value = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("{}: no epoch record", metrics.display()))?;
    let test_acc = last["test_acc"]
        .as_f64()
        .with_context(|| format!("{}: no test_acc", metrics.display()))?;
    let log_text = std::fs::read_to_string(log).unwrap_or_default();
    let parameters = log_text
        .lines()
        .rev()
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("parameters=")?.parse().ok())
        })
        .with_context(|| format!("{}: no `parameters=` line", log.display()))?;
    Ok(TrainResult {
        test_acc,
        parameters,
        cost,
    })
}
