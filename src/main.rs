//! `colloquy`: one binary, one subcommand per process, plus the audit tooling.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use colloquy::runtime::{self, Processes};
use colloquy_infra::{kafka, postgres, telemetry, Settings};

/// mimalloc instead of the system's allocator: the API, relay and projectors allocate many
/// small, short-lived buffers per request and per event (JSON, SQL arguments, HTTP
/// headers), and glibc's malloc took about 15 % of `serve`'s CPU under load (bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// API, relay, projectors and the assistant in one process, for local use (the only process that
    /// accepts the published development JWT key of the defaults).
    Dev,
    /// The HTTP API.
    Serve,
    /// The relay from the event store to Kafka (one active, others stand by).
    Relay,
    /// The projector workers.
    Project,
    /// The assistant worker: answers posted messages through the configured model providers.
    Assistant,
    /// The ingest worker: extracts uploaded files and indexes knowledge documents (chunks,
    /// embeddings) for search and grounded answers.
    Ingest,
    /// Create the database if missing and apply its migrations.
    Migrate,
    /// Create the Kafka topics.
    Topics,
    /// Rebuild a projection (users, conversations, messages, files, knowledge, usage) from the
    /// event store; `usage` is priced with the configured `assistant.prices`.
    Rebuild {
        /// The projection's name.
        projection: String,
    },
    /// Re-embed the knowledge base's chunks that another embedder made, after
    /// `knowledge.embedder` changed: one document at a time, each wholly in one embedding
    /// space at every moment. Prints a JSON report; run it again after an interruption.
    Reembed,
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
    /// Check the event store (gap-free sequences, every event readable, relay and
    /// projection lag, quarantined aggregates) and compare Kafka's topics with it (events
    /// missing from their topic, forged or corrupt records, duplicates). Prints a JSON
    /// report; exits with 1 when the log is damaged or Kafka lost or holds forged records.
    Verify {
        /// Check the event store only, not Kafka.
        #[arg(long)]
        skip_kafka: bool,
    },
    /// Aggregates a projection set aside after a poison event.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
    /// Write the JSON Schemas of every event type into a folder (default: schemas/).
    Schemas {
        /// Destination folder.
        #[arg(default_value = "schemas")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum QuarantineAction {
    /// Print every quarantined aggregate (of one projection, or all) as JSON lines.
    List {
        /// Only this projection.
        projection: Option<String>,
    },
    /// Lift one aggregate's quarantine after fixing the cause, and apply its events from
    /// the event store at once (a poison event quarantines it again, with the new cause).
    Clear {
        /// The projection (users, conversations, messages).
        projection: String,
        /// The aggregate's id.
        aggregate_id: String,
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
    if matches!(
        cli.command,
        Command::Dev | Command::Serve | Command::Relay | Command::Project | Command::Assistant | Command::Ingest
    ) {
        settings.auth.check_keys().context("refusing to start")?;
    }
    let processes = match cli.command {
        Command::Dev => Processes::all(),
        Command::Serve => Processes { api: true, ..Default::default() },
        Command::Relay => Processes { relay: true, ..Default::default() },
        Command::Project => Processes { projectors: true, ..Default::default() },
        Command::Assistant => Processes { assistant: true, ..Default::default() },
        Command::Ingest => Processes { ingest: true, ..Default::default() },
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
            let p = colloquy_projections::by_name(&projection, &settings.assistant.prices)
                .with_context(|| format!("no projection named {projection}"))?;
            let pool = postgres::connect(&settings.database).await?;
            let report = colloquy_projections::rebuild::rebuild(&pool, p.as_ref()).await?;
            let redis = colloquy_infra::redis_store::RedisStore::connect(&settings.redis).await?;
            colloquy_projections::cache::invalidate_all(&redis).await?;
            tracing::info!(events = report.events, quarantined = report.quarantined.len(), "Rebuild finished.");
            writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&report)?)?;
            return Ok(());
        }
        Command::Reembed => {
            let pool = postgres::connect(&settings.database).await?;
            let embedder = colloquy::runtime::embedder(&settings).await?;
            let report = colloquy_commands::ingest::reembed(&pool, embedder).await?;
            tracing::info!(documents = report.documents, chunks = report.chunks, "Re-embedding finished.");
            writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&report)?)?;
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
        Command::Quarantine { action } => {
            let pool = postgres::connect(&settings.database).await?;
            let mut out = std::io::stdout().lock();
            match action {
                QuarantineAction::List { projection } => {
                    for q in colloquy_projections::quarantine::list(&pool, projection.as_deref()).await? {
                        writeln!(out, "{}", serde_json::to_string(&q)?)?;
                    }
                }
                QuarantineAction::Clear { projection, aggregate_id } => {
                    let p = colloquy_projections::by_name(&projection, &settings.assistant.prices)
                        .with_context(|| format!("no projection named {projection}"))?;
                    let cleared = colloquy_projections::quarantine::clear(&pool, p.name(), &aggregate_id)
                        .await?
                        .with_context(|| format!("{aggregate_id} is not quarantined for {projection}"))?;
                    let outcomes = colloquy_projections::reconcile::catch_up(
                        &pool,
                        p.as_ref(),
                        &cleared.aggregate_type,
                        &aggregate_id,
                    )
                    .await?;
                    let (mut applied, mut touched) = (0, Vec::new());
                    for outcome in &outcomes {
                        if let colloquy_projections::projection::Applied::Applied { filled, touched: t } = outcome {
                            applied += 1 + filled;
                            touched.extend(t);
                        }
                    }
                    // The users whose cached views the applied events changed.
                    if !touched.is_empty() {
                        let redis = colloquy_infra::redis_store::RedisStore::connect(&settings.redis).await?;
                        for user in touched {
                            colloquy_projections::cache::invalidate(&redis, user).await?;
                        }
                    }
                    let again = colloquy_projections::quarantine::list(&pool, Some(p.name()))
                        .await?
                        .into_iter()
                        .find(|q| q.aggregate_id == aggregate_id);
                    writeln!(
                        out,
                        "{}",
                        serde_json::to_string_pretty(
                            &serde_json::json!({"cleared": cleared, "applied": applied, "quarantined_again": again})
                        )?
                    )?;
                    if again.is_some() {
                        std::process::exit(1);
                    }
                }
            }
            return Ok(());
        }
        Command::Verify { skip_kafka } => {
            let pool = postgres::connect(&settings.database).await?;
            let mut report = colloquy::audit::verify(&pool, &settings.relay.name).await?;
            if !skip_kafka {
                report.kafka = Some(colloquy::audit::verify_kafka(&pool, &settings.kafka, &settings.relay.name).await?);
            }
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
