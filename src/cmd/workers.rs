//! Data-parallel runs: `--devices N` (N worker processes on this machine), `--nodes M
//! --node-rank R --coordinator HOST:PORT` (several machines), `--accumulate N` (one
//! process, N shards in turn) and `splitnas coordinator`. See docs/parallel.md.
//!
//! The launcher starts the orchestrator (single machine) and one worker per device: the
//! same command line plus the hidden `--worker-rank/--worker-port/--worker-host` flags.
//! Worker 0's output is the run's; a worker that stops stops the others and names itself.

use anyhow::{bail, Context, Result};
use clap::Args;
use splitnas_search::device::DeviceKind;
use splitnas_search::parallel::{run_coordinator, Cluster, Workers};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Flags of a data-parallel search or training.
#[derive(Args, Clone, Debug, Default)]
pub struct WorkerArgs {
    /// Worker processes on this machine, one per device (cuda: one GPU each; cpu: the
    /// cores shared). Each computes its shard of every batch; gradients are averaged.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub devices: usize,
    /// Machines taking part (each runs this command with its --node-rank).
    #[arg(long, default_value_t = 1, value_name = "M")]
    pub nodes: usize,
    /// This machine's place among --nodes (0 writes the run's files).
    #[arg(long, default_value_t = 0, value_name = "R")]
    pub node_rank: usize,
    /// The coordinator (`splitnas coordinator --port PORT` on one machine), HOST:PORT;
    /// needed with --nodes above 1.
    #[arg(long, value_name = "HOST:PORT")]
    pub coordinator: Option<String>,
    /// This machine's address as the other machines reach it (default 127.0.0.1).
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// One process computes N shards of every batch in turn and averages their
    /// gradients (the update N workers make; less memory per step).
    #[arg(long, value_name = "N")]
    pub accumulate: Option<usize>,
    #[arg(long, hide = true)]
    pub worker_rank: Option<usize>,
    #[arg(long, hide = true)]
    pub worker_port: Option<u16>,
}

impl WorkerArgs {
    fn total(&self) -> usize {
        self.devices * self.nodes
    }

    fn check(&self) -> Result<()> {
        if self.devices == 0 {
            bail!("--devices must be at least 1");
        }
        if self.nodes == 0 {
            bail!("--nodes must be at least 1");
        }
        if self.node_rank >= self.nodes {
            bail!(
                "--node-rank {} must be below --nodes {}",
                self.node_rank,
                self.nodes
            );
        }
        if self.nodes > 1 && self.coordinator.is_none() {
            bail!("--nodes {} needs --coordinator HOST:PORT (`splitnas coordinator --port PORT` on one machine)", self.nodes);
        }
        if let Some(n) = self.accumulate {
            if n == 0 {
                bail!("--accumulate must be at least 1");
            }
            if self.total() > 1 {
                bail!("--accumulate runs the shards in one process: not with --devices/--nodes");
            }
        }
        Ok(())
    }

    /// This process's share of the steps (`None`: the plain single-process step).
    pub fn workers(&self) -> Result<Option<Workers>> {
        self.check()?;
        if let Some(rank) = self.worker_rank {
            let port = self
                .worker_port
                .context("--worker-rank needs --worker-port")?;
            return Ok(Some(Workers::Join {
                rank,
                count: self.total(),
                cluster: Cluster {
                    coordinator: ws(self.coordinator.as_deref().unwrap_or_default()),
                    host: self.host.clone(),
                    data_port: port,
                },
            }));
        }
        Ok(self.accumulate.filter(|&n| n > 1).map(Workers::Accumulate))
    }

    /// Whether this process launches workers instead of computing.
    pub fn launches(&self) -> bool {
        self.worker_rank.is_none() && self.total() > 1
    }

    /// Starts this machine's workers (and, on one machine, the coordinator), waits for
    /// them, and stops them all when one fails.
    pub fn launch(&self, device: DeviceKind) -> Result<()> {
        self.check()?;
        let coordinator = match &self.coordinator {
            Some(c) => c.clone(),
            None => {
                let port = free_port()?;
                std::thread::spawn(move || {
                    if let Err(e) = run_coordinator(port) {
                        eprintln!("{e}");
                    }
                });
                format!("127.0.0.1:{port}")
            }
        };
        eprintln!(
            "data-parallel: {} workers ({} on this machine, {device}), coordinator {coordinator}",
            self.total(),
            self.devices
        );
        let exe = std::env::current_exe().context("cannot find this program to start workers")?;
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut children: Vec<(usize, Child)> = vec![];
        for local in 0..self.devices {
            let rank = self.node_rank * self.devices + local;
            let mut cmd = Command::new(&exe);
            cmd.args(&args)
                .args(["--worker-rank", &rank.to_string()])
                .args(["--worker-port", &free_port()?.to_string()]);
            if self.coordinator.is_none() {
                cmd.args(["--coordinator", &coordinator]);
            }
            if rank != 0 {
                cmd.stdout(Stdio::null());
            }
            match device {
                DeviceKind::Cuda if std::env::var_os("CUDA_VISIBLE_DEVICES").is_none() => {
                    cmd.env("CUDA_VISIBLE_DEVICES", local.to_string());
                }
                DeviceKind::Cpu | DeviceKind::Ndarray
                    if std::env::var_os("RAYON_NUM_THREADS").is_none() =>
                {
                    cmd.env(
                        "RAYON_NUM_THREADS",
                        (threads / self.devices).max(1).to_string(),
                    );
                }
                _ => {}
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("cannot start worker {rank}"))?;
            children.push((rank, child));
        }
        wait_all(children)
    }
}

/// `ws://HOST:PORT` from `HOST:PORT` (a full address is kept).
fn ws(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("ws://{addr}")
    }
}

/// A port nothing listens on now.
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

/// Waits for every worker; the first that fails stops the others and is named.
fn wait_all(mut children: Vec<(usize, Child)>) -> Result<()> {
    loop {
        let mut failed = None;
        let mut running = 0;
        for (rank, child) in &mut children {
            match child.try_wait() {
                Ok(Some(status)) if !status.success() => {
                    failed = Some((*rank, status.to_string()));
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) => running += 1,
                Err(e) => {
                    failed = Some((*rank, e.to_string()));
                    break;
                }
            }
        }
        if let Some((rank, why)) = failed {
            for (_, child) in &mut children {
                let _ = child.kill();
                let _ = child.wait();
            }
            bail!("data-parallel: worker {rank} stopped ({why}; its error is above); the other workers were stopped. A run that wrote a checkpoint continues with the same command and --resume");
        }
        if running == 0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Flags of `splitnas coordinator`.
#[derive(Args)]
pub struct CoordinatorArgs {
    /// The port the workers of every machine connect to (--coordinator HOST:PORT).
    #[arg(long)]
    port: u16,
}

/// Runs the coordinator of a several-machine run until interrupted.
pub fn coordinator(a: CoordinatorArgs) -> Result<()> {
    println!("coordinator listening on port {} (Ctrl-C stops it)", a.port);
    run_coordinator(a.port)?;
    Ok(())
}
