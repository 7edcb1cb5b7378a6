//! A broker of the bench's own: Tansu (the binary `scripts/services.sh` installs) on a free
//! port with an empty SQLite store in a temporary folder, removed at the end. Every run
//! therefore starts from the same broker state: Tansu's store slows down as it grows (a
//! run on a broker holding three earlier runs' topics drained its read model in 48 s, the
//! same code on an empty one in 7.8 s), and a broker damaged by an earlier run does not
//! spoil the next. Like the project's supervisor, the bench restarts it when it exits (Tansu
//! 0.6 aborts on some requests) and reports how often that happened.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::Command;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The private broker.
pub struct Broker {
    /// `host:port`, for `kafka.brokers`.
    pub address: String,
    /// The running broker's pid (it changes when it is restarted).
    pid: watch::Receiver<Option<u32>>,
    restarts: Arc<AtomicU64>,
    stop: CancellationToken,
    supervisor: tokio::task::JoinHandle<()>,
    dir: PathBuf,
}

/// The Tansu binary, installed by the project's script if missing.
fn tansu_binary() -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(crate::services_script("tansu-path")?.trim()))
}

impl Broker {
    /// Starts the broker and waits until it accepts connections.
    pub async fn start(nice: i32) -> anyhow::Result<Self> {
        let binary = tansu_binary()?;
        let dir = std::env::temp_dir().join(format!("colloquy-bench-broker-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let address = format!("127.0.0.1:{port}");
        let (pid_tx, pid) = watch::channel(None);
        let restarts = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let supervisor = {
            let (dir, address, restarts, stop) = (dir.clone(), address.clone(), restarts.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    let url = format!("tcp://{address}");
                    let spawned = Command::new(&binary)
                        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
                        .args(["--storage-engine", "sqlite://tansu.db"])
                        .current_dir(&dir)
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::io::stderr())
                        .kill_on_drop(true)
                        .spawn();
                    let mut child = match spawned {
                        Ok(child) => child,
                        Err(e) => {
                            eprintln!("[bench] could not start the broker: {e}");
                            return;
                        }
                    };
                    if let (Some(pid), true) = (child.id(), nice != 0) {
                        let reniced = Command::new("renice")
                            .args(["-n", &nice.to_string(), "-p", &pid.to_string()])
                            .stdout(std::process::Stdio::null())
                            .status()
                            .await;
                        if !reniced.is_ok_and(|s| s.success()) {
                            eprintln!("[bench] warning: could not renice the broker to {nice}");
                        }
                    }
                    let _ = pid_tx.send(child.id());
                    tokio::select! {
                        status = child.wait() => {
                            eprintln!("[bench] the broker exited ({status:?}); restarting it");
                            restarts.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        _ = stop.cancelled() => {
                            let _ = child.kill().await;
                            return;
                        }
                    }
                }
            })
        };
        let broker = Self { address, pid, restarts, stop, supervisor, dir };
        let give_up = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(&broker.address).await.is_err() {
            if Instant::now() > give_up {
                broker.stop().await;
                bail!("the bench's broker did not listen within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("[bench] broker (Tansu, empty store, nice {nice}) on {}", broker.address);
        Ok(broker)
    }

    /// The broker process's pid now.
    pub fn pid(&self) -> Option<u32> {
        *self.pid.borrow()
    }

    /// How often it had to be restarted.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Stops it and removes its store.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.supervisor.await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
