//! A whole colloquy deployment on this machine, owned by one test: its own PostgreSQL
//! cluster, Redis server and Kafka-compatible broker (Tansu with SQLite storage) on free
//! ports in a temporary folder, and the real `colloquy` binary as separate processes
//! (`serve` ×2, `relay` ×2, `project` ×2). Faults are injected into these, never into the
//! machine's shared services, so the suite cannot disturb anything else.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use uuid::Uuid;

/// A free TCP port on the loopback interface (free when asked; the OS will not hand it out
/// again at once).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

async fn wait_port(port: u16, what: &str) {
    for _ in 0..300 {
        if port_open(port) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not listen on port {port} within 30 s");
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// A PostgreSQL cluster of the test's own (initdb in the temporary folder).
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
}

impl Postgres {
    fn bin_dir() -> PathBuf {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's binaries under /usr/lib/postgresql (scripts/services.sh installs them)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .collect();
        versions.sort();
        versions.pop().expect("an initdb under /usr/lib/postgresql/*/bin")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            // initdb and the server refuse to run as root.
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn init(dir: &Path) -> Self {
        let data = dir.join("pg");
        std::fs::create_dir_all(&data).expect("pg data dir");
        let as_postgres = is_root();
        if as_postgres {
            run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&data), "chown the data dir");
        }
        let pg = Self { port: free_port(), bin: Self::bin_dir(), data, as_postgres };
        run(
            pg.command("initdb").arg("-D").arg(&pg.data).args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ]),
            "initdb",
        );
        pg
    }

    fn pg_ctl(&self, action: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off",
            self.port,
            self.data.display()
        );
        // pg_ctl writes the log as the server's user: it stays in the data folder.
        run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-o", &options, "-l"])
                .arg(self.data.join("server.log"))
                .args(["-w", "-t", "60", "-m", "fast", action]),
            &format!("pg_ctl {action}"),
        );
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn restart(&self) {
        self.pg_ctl("restart");
    }
}

impl Postgres {
    /// Stops the server at once (idempotent).
    pub fn stop(&self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis server of the test's own.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start_child(port: u16) -> Child {
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/services.sh installs it)")
    }

    async fn start() -> Self {
        let port = free_port();
        let redis = Self { port, child: Some(Self::start_child(port)) };
        wait_port(port, "Redis").await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (everything it held is gone: it is only a cache).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn start_again(&mut self) {
        self.child = Some(Self::start_child(self.port));
        wait_port(self.port, "Redis").await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A broker of the test's own, started by `scripts/services.sh kafka` on its own port and
/// data folder: the same binary, storage, flags and supervisor a developer machine gets, so
/// a restart here loses exactly what it would lose there (nothing, with SQLite storage).
pub struct Broker {
    pub port: u16,
    state: PathBuf,
}

impl Broker {
    fn script(&self, action: &str) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let status = Command::new("bash")
            .arg(root.join("scripts/services.sh"))
            .arg(action)
            .env("COLLOQUY_KAFKA_PORT", self.port.to_string())
            .env("COLLOQUY_STATE_DIR", &self.state)
            .stdout(Stdio::null())
            .status()
            .expect("scripts/services.sh");
        assert!(status.success(), "scripts/services.sh {action} failed");
    }

    async fn start(dir: &Path) -> Self {
        let state = dir.join("broker");
        std::fs::create_dir_all(&state).expect("broker dir");
        let broker = Self { port: free_port(), state };
        broker.script("kafka");
        wait_port(broker.port, "the broker").await;
        broker
    }

    /// The broker process's pid (its supervisor restarts it when it exits).
    fn pid(&self) -> u32 {
        let pid = std::fs::read_to_string(self.state.join("tansu.pid")).expect("tansu.pid");
        pid.trim().parse().expect("a pid")
    }

    /// SIGSTOP for `pause`, then SIGCONT.
    pub async fn pause(&self, pause: Duration) {
        let pid = self.pid();
        signal(pid, "STOP");
        tokio::time::sleep(pause).await;
        signal(pid, "CONT");
    }

    /// Stops the broker (SIGTERM) and lets the services script's supervisor start it again
    /// on the same storage.
    pub async fn restart(&mut self) {
        let old = self.pid();
        signal(old, "TERM");
        for _ in 0..300 {
            let restarted = std::fs::read_to_string(self.state.join("tansu.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
                .is_some_and(|p| p != old);
            if restarted && port_open(self.port) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the broker was not restarted within 30 s");
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker and its supervisor (idempotent).
    pub fn stop(&mut self) {
        if self.state.join("tansu-supervisor.pid").exists() {
            self.script("stop-kafka");
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a colloquy process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Serve,
    Relay,
    Project,
}

impl Role {
    fn arg(self) -> &'static str {
        match self {
            Self::Serve => "serve",
            Self::Relay => "relay",
            Self::Project => "project",
        }
    }
}

/// One `colloquy` process.
pub struct Process {
    pub role: Role,
    /// The API port (serve) or the ops port (metrics and health of relay and project).
    pub port: u16,
    log: PathBuf,
    child: Option<Child>,
}

/// The deployment.
pub struct Cluster {
    pub dir: PathBuf,
    pub postgres: Postgres,
    pub redis: Redis,
    pub broker: Broker,
    pub processes: Vec<Process>,
    env: Vec<(String, String)>,
}

impl Cluster {
    /// Starts the services, migrates, creates the topics and starts two of each process.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("colloquy-faults-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        if is_root() {
            // The server's user must reach its data folder.
            run(Command::new("chmod").args(["755"]).arg(&dir), "chmod the temp dir");
        }
        let postgres = Postgres::init(&dir);
        postgres.pg_ctl("start");
        let redis = Redis::start().await;
        let broker = Broker::start(&dir).await;
        let key: String = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        let env: Vec<(String, String)> = [
            ("COLLOQUY_DATABASE__URL", postgres.url("colloquy")),
            ("COLLOQUY_DATABASE__MAX_CONNECTIONS", "16".into()),
            ("COLLOQUY_DATABASE__ACQUIRE_TIMEOUT_SECS", "5".into()),
            ("COLLOQUY_REDIS__URL", redis.url()),
            ("COLLOQUY_KAFKA__BROKERS", broker.address()),
            ("COLLOQUY_KAFKA__PARTITIONS", "2".into()),
            ("COLLOQUY_AUTH__KEYS", format!(r#"[{{kid="faults",secret="{key}"}}]"#)),
            ("COLLOQUY_AUTH__SIGNING_KID", "faults".into()),
            ("COLLOQUY_AUTH__ACCESS_TOKEN_TTL_SECS", "3600".into()),
            ("COLLOQUY_RATE_LIMIT__PER_MINUTE", "1000000".into()),
            ("COLLOQUY_RATE_LIMIT__BURST", "100000".into()),
            ("COLLOQUY_RATE_LIMIT__AUTH_PER_MINUTE", "100000".into()),
            ("COLLOQUY_RATE_LIMIT__AUTH_BURST", "100000".into()),
            ("COLLOQUY_HTTP__WORKERS", "2".into()),
            ("COLLOQUY_HTTP__IDEMPOTENCY_LEASE_SECS", "3".into()),
            ("COLLOQUY_HTTP__SHUTDOWN_TIMEOUT_SECS", "2".into()),
            ("COLLOQUY_LOG__FORMAT", "json".into()),
            ("COLLOQUY_LOG__FILTER", "info".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut cluster = Self { dir, postgres, redis, broker, processes: Vec::new(), env };
        cluster.create_database().await;
        cluster.once(&["migrate"]);
        cluster.once(&["topics"]);
        for role in [Role::Serve, Role::Serve, Role::Relay, Role::Relay, Role::Project, Role::Project] {
            let process = cluster.spawn(role, free_port(), cluster.processes.len());
            cluster.processes.push(process);
        }
        for p in &cluster.processes {
            wait_port(p.port, p.role.arg()).await;
        }
        cluster
    }

    async fn create_database(&self) {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.postgres.url("postgres")).await.expect("connect");
        sqlx::query("CREATE DATABASE colloquy").execute(&mut conn).await.expect("create database");
    }

    fn command(&self, args: &[&str], log: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_colloquy"));
        cmd.args(args).env_remove("RUST_LOG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let err = out.try_clone().expect("log file");
        cmd.stdout(out).stderr(err);
        cmd
    }

    /// Runs a one-shot subcommand to completion.
    pub fn once(&self, args: &[&str]) -> String {
        let log = self.dir.join(format!("{}.log", args.join("-")));
        let status = self.command(args, &log).status().expect("run colloquy");
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(status.success(), "colloquy {args:?} failed:\n{output}");
        output
    }

    fn spawn(&self, role: Role, port: u16, index: usize) -> Process {
        let log = self.dir.join(format!("{}-{index}.log", role.arg()));
        let mut cmd = self.command(&[role.arg()], &log);
        match role {
            Role::Serve => cmd.env("COLLOQUY_HTTP__PORT", port.to_string()).env("COLLOQUY_HTTP__OPS_PORT", "0"),
            Role::Relay | Role::Project => cmd.env("COLLOQUY_HTTP__OPS_PORT", port.to_string()),
        };
        let child = cmd.spawn().expect("spawn colloquy");
        Process { role, port, log, child: Some(child) }
    }

    /// The API ports.
    pub fn api_ports(&self) -> Vec<u16> {
        self.processes.iter().filter(|p| p.role == Role::Serve).map(|p| p.port).collect()
    }

    /// SIGKILL process `index`, then start its replacement at once (same port).
    pub async fn kill_and_replace(&mut self, index: usize) {
        let (role, port) = {
            let p = &mut self.processes[index];
            if let Some(mut child) = p.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            (p.role, p.port)
        };
        // The port is free again once the killed process is gone.
        let replacement = self.spawn(role, port, index);
        self.processes[index] = replacement;
        wait_port(port, role.arg()).await;
    }

    /// The index of the relay holding the lock (by its `relay_active` gauge).
    pub async fn active_relay(&self, http: &reqwest::Client) -> Option<usize> {
        for (i, p) in self.processes.iter().enumerate().filter(|(_, p)| p.role == Role::Relay) {
            let Ok(response) = http.get(format!("http://127.0.0.1:{}/metrics", p.port)).send().await else { continue };
            let text = response.text().await.unwrap_or_default();
            if text.lines().any(|l| l.trim() == "colloquy_relay_active 1") {
                return Some(i);
            }
        }
        None
    }

    pub fn first_of(&self, role: Role) -> usize {
        self.processes.iter().position(|p| p.role == role).expect("a process of that role")
    }

    /// The tail of every process log, for a failure message.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for p in &self.processes {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(8)..].join("\n");
            out.push_str(&format!("--- {} ({}):\n{tail}\n", p.role.arg(), p.log.display()));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.processes {
            if let Some(mut child) = p.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.broker.stop();
        self.redis.stop();
        self.postgres.stop();
        // The folder goes when the test passed (kept for a post-mortem otherwise).
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
