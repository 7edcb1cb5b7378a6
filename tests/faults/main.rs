//! The fault-injection suite: the real `colloquy` binary as separate processes (`serve` ×2,
//! `relay` ×2, `project` ×2) on a PostgreSQL cluster, Redis server and broker of the suite's
//! own, under a steady load of commands; one fault at a time, then the checks of
//! `checks.rs`. It prints a table of scenarios with acknowledged / stored / published /
//! projected counts.
//!
//! It restarts the services it runs on, so it is kept out of the parallel test run
//! (`#[ignore]`) and `scripts/test.sh` runs it on its own afterwards:
//! `cargo test --test faults -- --ignored --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod checks;
mod cluster;
mod load;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use checks::{Counts, Topics};
use cluster::{Cluster, Role};
use load::{Client, Ledger, User};

/// The faults, one per scenario.
#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    KillActiveRelay,
    KillProjector,
    KillApi,
    PauseBroker,
    RestartBroker,
    RestartPostgres,
    StopRedis,
}

impl Fault {
    const ALL: [Fault; 8] = [
        Fault::None,
        Fault::KillActiveRelay,
        Fault::KillProjector,
        Fault::KillApi,
        Fault::PauseBroker,
        Fault::RestartBroker,
        Fault::RestartPostgres,
        Fault::StopRedis,
    ];

    /// The scenarios to run: all, or those whose names contain one of the comma-separated
    /// words in `COLLOQUY_FAULTS` (e.g. `COLLOQUY_FAULTS=redis,relay`).
    fn selected() -> Vec<Fault> {
        let Ok(filter) = std::env::var("COLLOQUY_FAULTS") else { return Self::ALL.to_vec() };
        let words: Vec<String> = filter.split(',').map(|w| w.trim().to_lowercase()).filter(|w| !w.is_empty()).collect();
        Self::ALL.into_iter().filter(|f| words.iter().any(|w| f.name().to_lowercase().contains(w.as_str()))).collect()
    }

    fn name(self) -> &'static str {
        match self {
            Fault::None => "no fault",
            Fault::KillActiveRelay => "kill -9 the active relay",
            Fault::KillProjector => "kill -9 a projector",
            Fault::KillApi => "kill -9 an API instance",
            Fault::PauseBroker => "pause the broker 5 s",
            Fault::RestartBroker => "restart the broker",
            Fault::RestartPostgres => "restart PostgreSQL",
            Fault::StopRedis => "stop Redis 10 s",
        }
    }

    async fn inject(self, cluster: &mut Cluster, http: &reqwest::Client) {
        match self {
            Fault::None => {}
            Fault::KillActiveRelay => {
                let active = cluster.active_relay(http).await.expect("one relay is active");
                cluster.kill_and_replace(active).await;
            }
            Fault::KillProjector => {
                let projector = cluster.first_of(Role::Project);
                cluster.kill_and_replace(projector).await;
            }
            Fault::KillApi => {
                let api = cluster.first_of(Role::Serve);
                cluster.kill_and_replace(api).await;
            }
            Fault::PauseBroker => cluster.broker.pause(Duration::from_secs(5)).await,
            Fault::RestartBroker => cluster.broker.restart().await,
            Fault::RestartPostgres => cluster.postgres.restart(),
            Fault::StopRedis => {
                cluster.redis.stop();
                tokio::time::sleep(Duration::from_secs(10)).await;
                cluster.redis.start_again().await;
            }
        }
    }
}

/// Load before the fault, and after it while the system recovers.
const BEFORE: Duration = Duration::from_secs(3);
const AFTER: Duration = Duration::from_secs(5);
/// How long owed requests are re-sent (longer than the idempotency lease the suite sets).
const SETTLE: Duration = Duration::from_secs(60);

async fn scenario(
    cluster: &mut Cluster,
    client: &Client,
    users: &[User],
    topics: &mut Topics,
    fault: Fault,
) -> Result<Counts, String> {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (client, users, ledger, stop) = (client.clone(), users.to_vec(), ledger.clone(), stop.clone());
        async move { client.run(&users, &ledger, &stop).await }
    });
    tokio::time::sleep(BEFORE).await;
    fault.inject(cluster, client.http()).await;
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::Relaxed);
    load.await.map_err(|e| e.to_string())?;
    let unanswered = client.settle(users, &ledger, SETTLE).await;
    if let Some((request, why)) = unanswered.first() {
        return Err(format!(
            "{} requests still have no answer after {SETTLE:?}, e.g. {}: {why}",
            unanswered.len(),
            request.path
        ));
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    if ledger.acknowledged.is_empty() {
        return Err("no command was acknowledged".into());
    }
    checks::check(cluster, &ledger, topics).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "restarts the services it runs on: scripts/test.sh runs it alone after the suite"]
async fn the_pipeline_loses_nothing_acknowledged_under_faults() {
    let started = Instant::now();
    let mut cluster = Cluster::start().await;
    let client = Client::new(cluster.api_ports());
    let mut users = Vec::new();
    for _ in 0..6 {
        users.push(client.user().await);
    }
    println!();
    println!(
        "{:<28} {:>12} {:>8} {:>18} {:>10} {:>8}",
        "scenario", "acknowledged", "stored", "published/events", "projected", "seconds"
    );
    let mut failures = Vec::new();
    // What the checks have read of the topics: each scenario's check reads only what is new.
    let mut topics = Topics::default();
    for fault in Fault::selected() {
        let t = Instant::now();
        let outcome =
            tokio::time::timeout(Duration::from_secs(360), scenario(&mut cluster, &client, &users, &mut topics, fault))
                .await
                .unwrap_or_else(|_| Err("the scenario did not finish within 6 minutes".into()));
        match outcome {
            Ok(c) => println!(
                "{:<28} {:>12} {:>8} {:>18} {:>10} {:>8.1}",
                fault.name(),
                c.acknowledged,
                c.stored,
                format!("{}/{}", c.published, c.events),
                c.projected,
                t.elapsed().as_secs_f64()
            ),
            Err(why) => {
                println!("{:<28} FAILED: {why}", fault.name());
                failures.push(format!("{}: {why}", fault.name()));
            }
        }
    }
    println!("total: {:.0} s", started.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{failures:#?}\n{}", cluster.log_tails());
}
