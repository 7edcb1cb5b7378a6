//! `colloquy`: one binary, one subcommand per process, plus the audit tooling.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use colloquy::runtime::{self, Processes};
use colloquy_infra::{kafka, postgres, telemetry, Settings};

#[derive(Parser)]
#[command(name = "colloquy", version, about = "Event-sourced AI chat backend")]
struct Cli {
    /// A TOML settings file (default: ./colloquy.toml if present). COLLOQUY_* variables override it.
    #[arg(long, global = true, env = "COLLOQUY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// API, relay and projectors in one process, for local use (the only process that
    /// accepts the published development JWT key of the defaults).
    Dev,
    /// The HTTP API.
    Serve,
    /// The relay from the event store to Kafka (one active, others stand by).
    Relay,
    /// The projector workers.
    Project,
    /// Create the database if missing and apply its migrations.
    Migrate,
    /// Create the Kafka topics.
    Topics,
    /// Rebuild a projection (users, conversations, messages) from the event store.
    Rebuild {
        /// The projection's name.
        projection: String,
    },
    /// Print an aggregate's events, one JSON object per line.
    History {
        /// The aggregate type, as registered (`User`, `Conversation`, ...).
        aggregate_type: String,
        /// Its id.
        aggregate_id: String,
    },
    /// Print an aggregate's state at a version (default: now), replayed from its events.
    State {
        /// The aggregate type, as registered (`User`, `Conversation`, ...).
        aggregate_type: String,
        /// Its id.
        aggregate_id: String,
        /// The version to stop at.
        #[arg(long)]
        version: Option<i64>,
    },
    /// Print every event as a CloudEvent (the Kafka record value), one per line, in commit order.
    Export {
        /// Only this aggregate type, as registered.
        #[arg(long)]
        aggregate_type: Option<String>,
    },
    /// Check the event store: gap-free sequences, every event readable, relay and projection
    /// lag. Prints a JSON report; exits with 1 when the log itself is damaged.
    Verify,
    /// Write the JSON Schemas of every event type into a folder (default: schemas/).
    Schemas {
        /// Destination folder.
        #[arg(default_value = "schemas")]
        dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut settings = Settings::load(cli.config.as_deref())?;
    telemetry::init(&settings.log);
    // Only `dev` runs with the published development keys; the other processes refuse
    // them (and short ones) before connecting to anything, whether or not they sign tokens:
    // a deployment configured with one is misconfigured as a whole.
    settings.auth.allow_published_keys = matches!(cli.command, Command::Dev);
    if matches!(cli.command, Command::Dev | Command::Serve | Command::Relay | Command::Project) {
        settings.auth.check_keys().context("refusing to start")?;
    }
    let processes = match cli.command {
        Command::Dev => Processes { api: true, relay: true, projectors: true },
        Command::Serve => Processes { api: true, ..Default::default() },
        Command::Relay => Processes { relay: true, ..Default::default() },
        Command::Project => Processes { projectors: true, ..Default::default() },
        Command::Migrate => {
            if postgres::prepare(&settings.database).await? {
                tracing::info!("Database created.");
            }
            tracing::info!("Migrations applied.");
            return Ok(());
        }
        Command::Topics => {
            let created = kafka::ensure_topics(&settings.kafka).await?;
            tracing::info!(?created, "Topics ensured.");
            return Ok(());
        }
        Command::Rebuild { projection } => {
            let p = colloquy_projections::by_name(&projection)
                .with_context(|| format!("no projection named {projection}"))?;
            let pool = postgres::connect(&settings.database).await?;
            let report = colloquy_projections::rebuild::rebuild(&pool, p.as_ref()).await?;
            let redis = colloquy_infra::redis_store::RedisStore::connect(&settings.redis).await?;
            colloquy_projections::cache::invalidate_all(&redis).await?;
            tracing::info!(events = report.events, "Rebuild finished.");
            return Ok(());
        }
        Command::History { aggregate_type, aggregate_id } => {
            let pool = postgres::connect(&settings.database).await?;
            let mut out = std::io::stdout().lock();
            for e in colloquy::audit::history(&pool, &aggregate_type, &aggregate_id).await? {
                writeln!(out, "{}", serde_json::to_string(&e)?)?;
            }
            return Ok(());
        }
        Command::State { aggregate_type, aggregate_id, version } => {
            let pool = postgres::connect(&settings.database).await?;
            let state = colloquy::audit::state_at(&pool, &aggregate_type, &aggregate_id, version).await?;
            writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&state)?)?;
            return Ok(());
        }
        Command::Export { aggregate_type } => {
            let pool = postgres::connect(&settings.database).await?;
            let written = colloquy::audit::export(
                &pool,
                aggregate_type.as_deref(),
                std::io::BufWriter::new(std::io::stdout().lock()),
            )
            .await?;
            tracing::info!(events = written, "Export finished.");
            return Ok(());
        }
        Command::Verify => {
            let pool = postgres::connect(&settings.database).await?;
            let report = colloquy::audit::verify(&pool, &settings.relay.name).await?;
            writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&report)?)?;
            if !report.is_sound() {
                std::process::exit(1);
            }
            return Ok(());
        }
        Command::Schemas { dir } => {
            std::fs::create_dir_all(&dir)?;
            for aggregate in colloquy_domain::aggregates() {
                for (cloud_type, event) in aggregate.cloud_event_types() {
                    let path = dir.join(format!("{cloud_type}.json"));
                    std::fs::write(&path, serde_json::to_string_pretty(&event.schema)? + "\n")?;
                }
            }
            return Ok(());
        }
    };
    let deps = runtime::connect(&settings, processes).await?;
    let mut running = runtime::start(&settings, &deps, processes).await?;
    if let Some(port) = running.port {
        tracing::info!(url = %format!("http://{}:{port}", settings.http.host), "colloquy is up.");
    }
    let token = running.shutdown_token();
    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("Shutting down: finishing requests, committing offsets, flushing the producer.");
            running.stop().await;
        }
        _ = running.wait() => { token.cancel(); }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
