//! Data-parallel search and training: two worker processes (burn-collective's global mode on
//! localhost) step like one process that computes the two shards of every batch in turn
//! and averages their gradients (`--accumulate 2`, the reference); a killed worker stops
//! the run naming itself and `--resume` completes it; the several-machine flags with a
//! separate `splitnas coordinator`; bad flags.

use super::{records, splitnas};

/// Data-parallel training: 2 workers against `--accumulate 2`, with drop-path and the
/// auxiliary head (Burn's random draws seeded per shard), same checks as the search.
#[test]
fn two_training_workers_step_like_one_process_averaging_two_shards() {
    let dir = tempfile::tempdir().unwrap();
    let train = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--genotype",
            "DARTS_V2",
            "--dataset",
            "fashion-mnist",
            "--channels",
            "4",
            "--layers",
            "3",
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--train-limit",
            "256",
            "--test-limit",
            "64",
            "--drop-path",
            "0.2",
            "--auxiliary",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run(&args, &[]);
    };
    let (reference, parallel) = (dir.path().join("acc"), dir.path().join("dev"));
    train(&reference, &["--accumulate", "2"]);
    train(&parallel, &["--devices", "2"]);
    same_run(
        &reference,
        &parallel,
        "metrics.jsonl",
        2,
        &["model", "optim"],
        RUNNING,
    );
}
use std::path::Path;
use std::process::{Command, Stdio};

/// Small: C=4 L=3 on the first 256 training images, batch 32, 3 epochs (1 warm-up).
fn flags<'a>(out: &'a str, order: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "search",
        "--dataset",
        "fashion-mnist",
        "--channels",
        "4",
        "--layers",
        "3",
        "--train-limit",
        "256",
        "--batch-size",
        "32",
        "--epochs",
        "3",
        "--warmup-epochs",
        "1",
        "--order",
        order,
        "--out",
        out,
    ];
    v.extend_from_slice(extra);
    v
}

fn run(args: &[&str], env: &[(&str, &str)]) {
    let (ok, stdout, stderr) = splitnas(args, env);
    assert!(ok, "{args:?}\n{stdout}\n{stderr}");
}

fn file(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()))
}

/// BatchNorm running statistics: with 2 workers, worker 0's shards only (evaluation's,
/// not the step's).
const RUNNING: &[&str] = &["running_mean", "running_var"];

/// Both runs' architecture weights and network weights are the same (but `skip`). Golden:
/// the accumulating run. Tolerance: none. With 2 workers the all-reduce adds the two shard
/// gradients once, as the accumulating process does (f32 addition is commutative), then
/// both divide by 2, so every step is bit-identical: alphas.json byte for byte, the last
/// checkpoint's weight and optimizer records value for value (all but their ids), the
/// training accuracies from the same counts and the losses from the same sums (within
/// 1e-6: the workers' sums cross the all-reduce as f32). Validation figures differ:
/// evaluation uses BatchNorm running statistics, worker 0's shards only with 2 workers.
fn same_search(reference: &Path, parallel: &Path, skip: &[&str]) {
    same_run(
        reference,
        parallel,
        "search.jsonl",
        3,
        &["model", "optim", "arch-optim"],
        skip,
    );
    assert_eq!(
        file(reference, "alphas.json"),
        file(parallel, "alphas.json")
    );
}

/// [`same_search`] for any run: the `jsonl` records and the `files` of the checkpoint of
/// epoch `last`.
fn same_run(
    reference: &Path,
    parallel: &Path,
    jsonl: &str,
    last: usize,
    files: &[&str],
    skip: &[&str],
) {
    let lines = |dir: &Path| -> Vec<serde_json::Value> {
        String::from_utf8(file(dir, jsonl))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (a, b) = (lines(reference), lines(parallel));
    assert_eq!((a.len(), b.len()), (last, last));
    for (x, y) in a.iter().zip(&b) {
        for key in ["train_acc", "genotype"] {
            assert_eq!(x[key], y[key], "{key} of epoch {}", x["epoch"]);
        }
        let (l, m) = (
            x["train_loss"].as_f64().unwrap(),
            y["train_loss"].as_f64().unwrap(),
        );
        assert!((l - m).abs() <= 1e-6 * l, "train_loss {l} vs {m}");
    }
    let read =
        |dir: &Path, name: &str| file(dir, &format!("checkpoint/epoch-{last:04}-{name}.mpk"));
    let (ids_r, ids_p) = (
        ids(&read(reference, "model")),
        ids(&read(parallel, "model")),
    );
    for name in files {
        assert!(
            record(&read(reference, name), &ids_r, skip)
                == record(&read(parallel, name), &ids_p, skip),
            "{name} record differs"
        );
    }
}

fn decode(bytes: &[u8]) -> rmpv::Value {
    rmpv::decode::read_value(&mut &bytes[..]).expect("a MessagePack record")
}

/// The parameter ids of a Burn model record (its `id` fields: drawn afresh by every
/// process).
fn ids(model: &[u8]) -> Vec<String> {
    fn walk(v: &rmpv::Value, out: &mut Vec<String>) {
        match v {
            rmpv::Value::Map(entries) => {
                for (k, v) in entries {
                    match (k.as_str(), v.as_str()) {
                        (Some("id"), Some(id)) => out.push(id.to_string()),
                        _ => walk(v, out),
                    }
                }
            }
            rmpv::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = vec![];
    walk(&decode(model), &mut out);
    assert!(out.len() > 10, "a model record with parameters");
    out
}

/// A Burn record (MessagePack) without parameter ids and the `skip` fields: every other
/// key, tensor byte and number; the entries of a map keyed by parameter ids (an optimizer's states, in hash
/// order) sorted.
fn record(bytes: &[u8], ids: &[String], skip: &[&str]) -> Vec<String> {
    let walk_skip = skip;
    fn walk(v: &rmpv::Value, ids: &[String], skip: &[&str]) -> Vec<String> {
        match v {
            rmpv::Value::Map(entries) => {
                let mut by_id = false;
                let mut parts: Vec<String> = vec![];
                for (k, v) in entries {
                    let key = k.as_str().unwrap_or_default();
                    if key == "id" || skip.contains(&key) {
                        continue;
                    }
                    let mut part = walk(v, ids, skip);
                    if ids.iter().any(|i| i == key) {
                        by_id = true;
                    } else {
                        part.insert(0, k.to_string());
                    }
                    parts.push(part.join(","));
                }
                if by_id {
                    parts.sort();
                }
                parts
            }
            rmpv::Value::Array(items) => items.iter().flat_map(|v| walk(v, ids, skip)).collect(),
            other => vec![other.to_string()],
        }
    }
    walk(&decode(bytes), ids, walk_skip)
}

#[test]
fn two_workers_step_like_one_process_averaging_two_shards() {
    let dir = tempfile::tempdir().unwrap();
    for order in ["first", "second"] {
        let reference = dir.path().join(format!("acc-{order}"));
        let parallel = dir.path().join(format!("dev-{order}"));
        let r = reference.to_str().unwrap();
        run(&flags(r, order, &["--accumulate", "2"]), &[]);
        let p = parallel.to_str().unwrap();
        run(&flags(p, order, &["--devices", "2"]), &[]);
        same_search(&reference, &parallel, RUNNING);
        // and the plain single-process run differs (the shards' BatchNorm statistics
        // differ from the whole batch's): the comparison can fail
        if order == "first" {
            let plain = dir.path().join("plain");
            run(&flags(plain.to_str().unwrap(), order, &[]), &[]);
            assert_ne!(file(&plain, "alphas.json"), file(&reference, "alphas.json"));
        }
    }
}

#[test]
fn a_killed_worker_stops_the_run_and_resume_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    run(
        &flags(full.to_str().unwrap(), "first", &["--devices", "2"]),
        &[],
    );
    let killed = dir.path().join("killed");
    let k = killed.to_str().unwrap();
    let env = [
        ("SPLITNAS_ABORT_AFTER_EPOCH", "2"),
        ("SPLITNAS_ABORT_WORKER", "1"),
    ];
    let (ok, _, stderr) = splitnas(&flags(k, "first", &["--devices", "2"]), &env);
    assert!(!ok, "a killed worker must fail the run");
    assert!(
        stderr.contains("data-parallel: worker 1 stopped"),
        "{stderr}"
    );
    // worker 0 wrote epoch 2's checkpoint before worker 1 stopped (the barrier)
    assert_eq!(records(&killed).len(), 2);
    run(&flags(k, "first", &["--devices", "2", "--resume"]), &[]);
    // worker 0's running statistics too: resumed from its checkpoint
    same_search(&full, &killed, &[]);
}

/// The several-machine flags, on one: a `splitnas coordinator`, and two commands with
/// `--nodes 2 --node-rank R --coordinator` (one worker each).
#[test]
fn nodes_meet_at_a_separate_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("acc");
    run(
        &flags(reference.to_str().unwrap(), "first", &["--accumulate", "2"]),
        &[],
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut coordinator = Command::new(env!("CARGO_BIN_EXE_splitnas"))
        .args(["coordinator", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let nodes = dir.path().join("nodes");
    let out = nodes.to_str().unwrap();
    let node = |rank: &'static str| {
        let extra = [
            "--nodes",
            "2",
            "--node-rank",
            rank,
            "--coordinator",
            addr.as_str(),
        ];
        let args: Vec<String> = flags(out, "first", &extra)
            .iter()
            .map(|s| s.to_string())
            .collect();
        std::thread::spawn(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            splitnas(&refs, &[])
        })
    };
    let (n0, n1) = (node("0"), node("1"));
    let results = [n0.join().unwrap(), n1.join().unwrap()];
    let _ = coordinator.kill();
    let _ = coordinator.wait();
    for (ok, stdout, stderr) in &results {
        assert!(ok, "{stdout}\n{stderr}");
    }
    same_search(&reference, &nodes, RUNNING);
}

#[test]
fn bad_parallel_flags_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let o = out.to_str().unwrap();
    for (extra, want) in [
        (&["--devices", "0"][..], "--devices must be at least 1"),
        (
            &[
                "--nodes",
                "2",
                "--node-rank",
                "2",
                "--coordinator",
                "127.0.0.1:1",
            ][..],
            "--node-rank 2 must be below --nodes 2",
        ),
        (&["--nodes", "2"][..], "--nodes 2 needs --coordinator"),
        (
            &["--accumulate", "0"][..],
            "--accumulate must be at least 1",
        ),
        (
            &["--accumulate", "2", "--devices", "2"][..],
            "not with --devices",
        ),
    ] {
        let (ok, _, stderr) = splitnas(&flags(o, "first", extra), &[]);
        assert!(!ok && stderr.contains(want), "{extra:?}: {stderr}");
        assert!(!out.exists(), "{extra:?} wrote {o}");
    }
}
