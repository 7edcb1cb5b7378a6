//! The split layout: colloquy as it is deployed, one process per role, all children of the
//! bench. `--serve-processes` (2) `colloquy serve` behind the bench's clients (which spread
//! their connections over them, as a load balancer would), one `colloquy relay`, one
//! `colloquy project`, and with `--replies instant` one `colloquy assistant`. Each child runs
//! the release binary next to the bench's own (`cargo build --release -p colloquy`) with one
//! settings file the bench writes, so their CPU is read per process from `/proc`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use colloquy_infra::settings::JwtKey;
use colloquy_infra::Settings;
use tokio::process::{Child, Command};
use uuid::Uuid;

/// How long a child gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// How long a `serve` process gets to answer `/health/ready`.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// The running children.
pub struct Split {
    children: Vec<(String, Child)>,
    /// The API ports, one per `serve` process.
    pub ports: Vec<u16>,
    config: PathBuf,
}

/// The `colloquy` binary built beside this one.
fn colloquy_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating the bench's own binary")?;
    let colloquy = me.with_file_name("colloquy");
    if !colloquy.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --release -p colloquy` (bench/run.sh does)",
            colloquy.display()
        );
    }
    Ok(colloquy)
}

/// A port nobody listens on now (the child binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Split {
    /// Writes `settings` (with a fresh JWT key: only `colloquy dev` accepts the published
    /// one) to a settings file, migrates, creates the topics, then starts the processes and
    /// waits until every API answers `/health/ready`.
    pub async fn start(settings: &Settings, serve: usize, assistant: bool) -> anyhow::Result<Self> {
        let binary = colloquy_binary()?;
        let mut settings = settings.clone();
        let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        settings.auth.keys = vec![JwtKey { kid: "bench".into(), secret }];
        settings.auth.signing_kid = "bench".into();
        // The workers need no ops listener here; 0 switches it off.
        settings.http.ops_port = Some(0);
        let config = std::env::temp_dir().join(format!("colloquy-bench-{}.toml", Uuid::new_v4().simple()));
        std::fs::write(&config, toml::to_string(&settings).context("writing the settings as TOML")?)
            .with_context(|| format!("writing {}", config.display()))?;
        let mut split = Self { children: Vec::new(), ports: Vec::new(), config };

        for step in ["migrate", "topics"] {
            let status = Command::new(&binary)
                .arg("--config")
                .arg(&split.config)
                .arg(step)
                .stdout(std::io::stderr())
                .status()
                .await
                .with_context(|| format!("running colloquy {step}"))?;
            if !status.success() {
                bail!("colloquy {step} failed: {status}");
            }
        }
        for n in 1..=serve.max(1) {
            let port = free_port()?;
            split.spawn(&binary, "serve", &format!("serve {n}"), Some(port))?;
            split.ports.push(port);
        }
        split.spawn(&binary, "relay", "relay", None)?;
        split.spawn(&binary, "project", "project", None)?;
        if assistant {
            split.spawn(&binary, "assistant", "assistant", None)?;
        }
        for port in split.ports.clone() {
            split.wait_ready(port).await?;
        }
        Ok(split)
    }

    fn spawn(&mut self, binary: &Path, role: &str, label: &str, port: Option<u16>) -> anyhow::Result<()> {
        let mut command = Command::new(binary);
        // Their logs go to the bench's stderr: its stdout holds only the figures.
        command
            .arg("--config")
            .arg(&self.config)
            .arg(role)
            .stdin(Stdio::null())
            .stdout(std::io::stderr())
            .kill_on_drop(true);
        if let Some(port) = port {
            command.env("COLLOQUY_HTTP__PORT", port.to_string());
        }
        let child = command.spawn().with_context(|| format!("starting colloquy {role}"))?;
        self.children.push((label.to_string(), child));
        Ok(())
    }

    /// Polls `/health/ready` of the API on `port`; fails early if a child exited.
    async fn wait_ready(&mut self, port: u16) -> anyhow::Result<()> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let url = format!("http://127.0.0.1:{port}/health/ready");
        let give_up = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(r) = client.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            for (label, child) in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    bail!("colloquy {label} exited during start-up: {status}");
                }
            }
            if Instant::now() > give_up {
                bail!("{url} did not answer 200 within {READY_WITHIN:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Each child's pid and label, for the CPU figures.
    pub fn pids(&self) -> Vec<(u32, String)> {
        self.children.iter().filter_map(|(label, child)| Some((child.id()?, label.clone()))).collect()
    }

    /// SIGTERM to every child (they stop gracefully: finish requests, commit offsets, flush
    /// the producer), then waits; a child still running after [`STOP_GRACE`] is killed.
    pub async fn stop(mut self) {
        for (_, child) in &self.children {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            }
        }
        for (label, child) in &mut self.children {
            match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => eprintln!("[bench] warning: colloquy {label} stopped with {status}"),
                Ok(Err(e)) => eprintln!("[bench] warning: waiting for colloquy {label}: {e}"),
                Err(_) => {
                    eprintln!("[bench] warning: colloquy {label} did not stop within {STOP_GRACE:?}; killing it");
                    let _ = child.kill().await;
                }
            }
        }
    }
}

impl Drop for Split {
    /// The settings file goes also when start-up failed half-way (the children are killed
    /// on drop).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}
