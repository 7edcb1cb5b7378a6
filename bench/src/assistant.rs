//! `colloquy-bench --assistant`: what the assistant's streaming path costs.
//!
//! 1. Time to first token added by colloquy: per reply, the time from the fake provider
//!    receiving the request (its first chunk leaves at once) to the SSE client reading the
//!    first text delta. That is the worker, Redis (XADD + PUBLISH), the API's hub and the
//!    SSE relay. The fake (speaking OpenAI's wire format) and the clients run in a child
//!    process (`ttft-clients`), as they would on other machines, so their CPU is not
//!    colloquy's. Two phases over `--streams` conversations: a burst (all post at once, the
//!    fake answers at once, `--rounds` times), and the steady state (each client posts,
//!    streams a paced 200-chunk reply (about 5 s) to its end and posts again, so `--streams` streams are
//!    in flight; `--rounds` replies each after the first). Printed with the whole
//!    post → first token.
//! 2. Concurrent SSE streams one API instance holds: N clients (a child process, so their
//!    memory is not counted) stream replies that have not started; the API process's RSS
//!    before and after, per stream; then every stream gets a reply and the clients count
//!    those that saw `[DONE]`.
//! 3. The local model: load time, time to first token and tokens/s for a 64-token answer.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use colloquy::runtime::{self, Processes};
use colloquy_infra::assistant_settings::{ModelSettings, ProviderKind, ProviderSettings};
use colloquy_infra::reply_streams::{ReplyStreams, ReplyTarget, StreamEntry, StreamUsage};
use colloquy_infra::{telemetry, Settings};
use colloquy_providers::{ChatMessage, ChatProvider, ChatRequest, Parameters, Role, StreamItem};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::{create_conversations, http_client, millis, percentile, wait_for_conversations, Api, Args};

/// Target: colloquy adds at most this much to the provider's first token (p50).
const TARGET_TTFT_P50_MS: f64 = 5.0;

/// Runs the three measurements against an in-process colloquy on `db_url`.
pub async fn run(args: &Args, tag: &str, db_url: &str) -> anyhow::Result<()> {
    let mut clients = tokio::process::Command::new(std::env::current_exe()?)
        .arg("ttft-clients")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the ttft-clients process")?;
    let mut from_clients = tokio::io::BufReader::new(clients.stdout.take().context("no client output")?).lines();
    let hello: Value = serde_json::from_str(&from_clients.next_line().await?.context("ttft-clients said nothing")?)?;
    let fake_url = hello["base_url"].as_str().context("ttft-clients named no fake provider")?.to_string();
    let mut settings = crate::bench_settings(args, tag, db_url);
    settings.streams.wait_for_start_secs = 600;
    let a = &mut settings.assistant;
    a.providers.clear();
    a.models.clear();
    let fake_entry = ProviderSettings {
        kind: ProviderKind::Openai,
        base_url: fake_url,
        api_key: Some("bench".into()),
        ..ProviderSettings::default()
    };
    a.providers.insert("fake".into(), fake_entry);
    let model = ModelSettings { route: vec!["fake/instant".into()], context_window: 8192, max_output_tokens: 64 };
    a.models.insert("fake".into(), model);
    a.default_model = "fake".into();
    a.worker.max_concurrent_replies = 256;
    telemetry::init(&settings.log);

    let everything = Processes::all();
    let deps = runtime::connect(&settings, everything).await.context("connecting Postgres and Redis")?;
    let running = runtime::start(&settings, &deps, everything).await?;
    let Some(port) = running.port else { bail!("the API did not start") };
    eprintln!("[bench] colloquy (with the assistant) listening on 127.0.0.1:{port}");
    let redis = deps.redis.clone().context("no Redis")?;
    let streams = ReplyStreams::new(&redis, &settings.streams);
    let outcome = measure(args, tag, port, &mut clients, &mut from_clients, &streams, &deps.metrics).await;
    if tokio::time::timeout(Duration::from_secs(30), running.stop()).await.is_err() {
        eprintln!("[bench] warning: colloquy did not stop within 30 s");
    }
    if let Err(e) = crate::forget_redis_keys(&settings.redis.url, &settings.redis.key_prefix).await {
        eprintln!("[bench] warning: could not delete this run's Redis keys: {e}");
    }
    deps.pool.close().await;
    outcome?;
    local_model(&settings).await
}

async fn measure(
    args: &Args,
    tag: &str,
    port: u16,
    clients: &mut tokio::process::Child,
    from_clients: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    streams: &ReplyStreams,
    metrics: &colloquy_infra::metrics::Metrics,
) -> anyhow::Result<()> {
    let base = format!("http://127.0.0.1:{port}/api/v1");
    let api = Api::login(http_client(4)?, &base, tag).await?;
    let concurrency = args.streams;
    let conversations = Arc::new(create_conversations(&api, concurrency, "assistant").await?);
    wait_for_conversations(&api, &conversations).await?;

    // 1. Time to first token, measured by the clients' process.
    let job = json!({ "base": base, "token": api.token, "conversations": *conversations, "rounds": args.rounds });
    let mut to_clients = clients.stdin.take().context("no client input")?;
    to_clients.write_all(format!("{job}\n").as_bytes()).await?;
    to_clients.flush().await?;
    let line = from_clients.next_line().await?.context("ttft-clients ended without figures")?;
    let _ = clients.wait().await;
    let figures: Value = serde_json::from_str(&line)?;
    let durations = |phase: &str, key: &str| -> Vec<Duration> {
        figures[phase][key]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_u64).map(Duration::from_micros).collect())
            .unwrap_or_default()
    };
    let (mut burst, mut burst_total) = (durations("burst", "added_us"), durations("burst", "total_us"));
    let (mut steady, mut steady_total) = (durations("steady", "added_us"), durations("steady", "total_us"));
    let p50 = millis(percentile(&mut steady, 0.50));
    say(format!(
        "time to first token added by colloquy (fake provider and clients in another process, {concurrency} conversations):"
    ));
    say(format!(
        "  {concurrency} streams in flight ({} paced replies of {} chunks {} ms apart, {:.0} streams open on average):",
        steady.len(),
        figures["paced_chunks"],
        figures["pace_ms"],
        figures["steady_mean_open"].as_f64().unwrap_or(f64::NAN)
    ));
    say(format!(
        "    p50 {p50:.2} ms, p99 {:.2} ms (target p50 <= {TARGET_TTFT_P50_MS} ms: {}); post -> first token p50 {:.1} ms, p99 {:.1} ms",
        millis(percentile(&mut steady, 0.99)),
        crate::verdict(p50 <= TARGET_TTFT_P50_MS),
        millis(percentile(&mut steady_total, 0.50)),
        millis(percentile(&mut steady_total, 0.99)),
    ));
    say(format!(
        "  {concurrency} replies starting at the same instant ({} rounds, {} replies):",
        args.rounds,
        burst.len()
    ));
    say(format!(
        "    p50 {:.2} ms, p99 {:.2} ms; post -> first token p50 {:.1} ms, p99 {:.1} ms",
        millis(percentile(&mut burst, 0.50)),
        millis(percentile(&mut burst, 0.99)),
        millis(percentile(&mut burst_total, 0.50)),
        millis(percentile(&mut burst_total, 0.99)),
    ));

    // 2. Concurrent SSE streams on this API instance.
    let clients = args.sse_clients;
    let replies: Vec<ReplyTarget> = (0..clients.div_ceil(100).max(1))
        .map(|i| ReplyTarget {
            reply_id: Uuid::new_v4(),
            conversation_id: conversations[i % conversations.len()],
            owner_id: api_user(&api),
        })
        .collect();
    let paths: Vec<String> = replies
        .iter()
        .map(|r| format!("{base}/conversations/{}/replies/{}/stream", r.conversation_id, r.reply_id))
        .collect();
    let before = rss_kib()?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("sse-clients")
        .arg(clients.to_string())
        .arg(&api.token)
        .args(&paths)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the SSE client process")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while metrics.sse_streams_active.get() < clients as i64 {
        if Instant::now() > deadline {
            bail!("only {} of {clients} SSE streams opened", metrics.sse_streams_active.get());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib()?;
    let sent = Instant::now();
    for target in &replies {
        streams.append(target, &StreamEntry::Started { model: "fake".into(), created: 0 }).await?;
        streams.append(target, &StreamEntry::Delta { text: "hello".into() }).await?;
        let usage = StreamUsage { input_tokens: 1, output_tokens: 1 };
        streams.append(target, &StreamEntry::Completed { finish_reason: "stop".into(), usage }).await?;
    }
    let stdout = child.stdout.take().context("no client output")?;
    let mut done = String::new();
    BufReader::new(stdout).read_line(&mut done)?;
    let delivered = sent.elapsed();
    let _ = child.wait();
    let per_stream = (after.saturating_sub(before)) as f64 / clients as f64;
    say(format!("concurrent SSE streams on one API instance: {clients} held"));
    say(format!(
        "  API process RSS {:.1} MiB -> {:.1} MiB: {per_stream:.1} KiB per stream; a reply to all of them: {} [DONE]s in {:.0} ms",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        done.trim(),
        delivered.as_secs_f64() * 1000.0
    ));
    Ok(())
}

/// The user id in the bench user's access token (`sub`).
fn api_user(api: &Api) -> Uuid {
    let payload = api.token.split('.').nth(1).unwrap_or_default();
    let decoded = base64_url(payload);
    serde_json::from_slice::<Value>(&decoded)
        .ok()
        .and_then(|v| v["sub"].as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_default()
}

fn base64_url(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let Some(v) = ALPHABET.iter().position(|a| *a == c) else { continue };
        bits = (bits << 6) | v as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

/// Prints one line of the report.
fn say(line: String) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// This process's resident memory, in KiB.
fn rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/self/status")
}

/// 3. The local model on this machine.
async fn local_model(settings: &Settings) -> anyhow::Result<()> {
    let dir = settings.assistant.local.models_dir.clone();
    let loading = Instant::now();
    let chat = match tokio::task::spawn_blocking(move || colloquy_local::LocalChat::load(&dir, 1)).await? {
        Ok(chat) => chat,
        Err(e) => {
            say(format!("local model: not measured ({e})"));
            return Ok(());
        }
    };
    let load = loading.elapsed();
    let request = ChatRequest {
        model: "smollm2-135m".into(),
        messages: vec![ChatMessage::new(Role::User, "Write a short paragraph about the sea.")],
        parameters: Parameters { max_tokens: Some(64), temperature: Some(0.0), top_p: None },
    };
    let one_reply = |request: ChatRequest| async {
        let started = Instant::now();
        let mut stream = chat.stream_chat(request).await?;
        let (mut first, mut tokens) = (None, 0u32);
        while let Some(item) = stream.next().await {
            match item? {
                StreamItem::Delta(_) => {
                    first.get_or_insert_with(|| started.elapsed());
                }
                StreamItem::Usage(u) => tokens = u.output_tokens,
                StreamItem::Finished(_) => break,
            }
        }
        anyhow::Ok((first.unwrap_or_default(), tokens, started.elapsed()))
    };
    let (first, tokens, elapsed) = one_reply(request.clone()).await?;
    let decode = elapsed.saturating_sub(first).as_secs_f64();
    say(format!(
        "local model (SmolLM2-135M, Q4_0 on the CPU): load {:.1} s, first token {:.0} ms, {tokens} tokens at {:.1} tokens/s",
        load.as_secs_f64(),
        first.as_secs_f64() * 1000.0,
        f64::from(tokens.saturating_sub(1)) / decode.max(1e-9)
    ));
    // Whole replies, one after another, as the assistant worker runs them on two cores.
    const REPLIES: u32 = 5;
    let started = Instant::now();
    let mut generated = 0;
    for _ in 0..REPLIES {
        generated += one_reply(request.clone()).await?.1;
    }
    let secs = started.elapsed().as_secs_f64();
    say(format!(
        "local model replies: {REPLIES} replies ({generated} tokens, up to 64 each) in {secs:.1} s = {:.2} replies/s, one at a time",
        f64::from(REPLIES) / secs
    ));
    Ok(())
}
