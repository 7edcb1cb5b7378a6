//! `colloquy-bench --assistant`: what the assistant's streaming path costs.
//!
//! 1. Time to first token added by colloquy: 100 conversations post at once, the fake
//!    provider (in this process, speaking OpenAI's wire format) answers each at once; per
//!    reply, the time from the fake receiving the request (its first chunk leaves then) to
//!    the SSE client reading the first text delta. That is the worker, Redis (XADD +
//!    PUBLISH), the API's hub and the SSE relay. Printed with the whole post → first token.
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
use colloquy_providers::testing::{FakeProvider, Script};
use colloquy_providers::{ChatMessage, ChatProvider, ChatRequest, Parameters, Role, StreamItem};
use futures::StreamExt;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{create_conversations, http_client, millis, percentile, wait_for_conversations, Api, Args};

/// Target: colloquy adds at most this much to the provider's first token (p50).
const TARGET_TTFT_P50_MS: f64 = 5.0;

/// Runs the three measurements against an in-process colloquy on `db_url`.
pub async fn run(args: &Args, tag: &str, db_url: &str) -> anyhow::Result<()> {
    let fake = FakeProvider::start().await;
    fake.set_default(Script::reply(&["first ", "second ", "third ", "fourth"]));
    let mut settings = crate::bench_settings(args, tag, db_url);
    settings.streams.wait_for_start_secs = 600;
    let a = &mut settings.assistant;
    a.providers.clear();
    a.models.clear();
    let fake_entry = ProviderSettings {
        kind: ProviderKind::Openai,
        base_url: fake.base_url(),
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
    let outcome = measure(args, tag, port, &fake, &streams, &deps.metrics).await;
    if tokio::time::timeout(Duration::from_secs(30), running.stop()).await.is_err() {
        eprintln!("[bench] warning: colloquy did not stop within 30 s");
    }
    if let Err(e) = crate::forget_redis_keys(redis.conn.clone(), &settings.redis.key_prefix).await {
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
    fake: &FakeProvider,
    streams: &ReplyStreams,
    metrics: &colloquy_infra::metrics::Metrics,
) -> anyhow::Result<()> {
    let base = format!("http://127.0.0.1:{port}/api/v1");
    let api = Api::login(http_client(4)?, &base, tag).await?;
    let concurrency = args.streams;
    let conversations = Arc::new(create_conversations(&api, concurrency, "assistant").await?);
    wait_for_conversations(&api, &conversations).await?;

    // 1. Time to first token, `rounds` rounds of `concurrency` replies at once.
    let (mut added, mut total) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, conversation) in conversations.iter().enumerate() {
            let (api, conversation) = (api.with_client(http_client(1)?), *conversation);
            let content = format!("bench {round}-{i}");
            tasks.spawn(async move { first_token(&api, conversation, content).await });
        }
        let mut firsts = Vec::new();
        while let Some(done) = tasks.join_next().await {
            firsts.push(done??);
        }
        let asked = fake.requests();
        for (content, posted_at, first_at) in firsts {
            let request = asked.iter().find(|r| {
                r.body["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str())
                    == Some(content.as_str())
            });
            let Some(request) = request else { bail!("the fake never saw {content}") };
            added.push(first_at.saturating_duration_since(request.at));
            total.push(first_at.duration_since(posted_at));
        }
    }
    let p50 = millis(percentile(&mut added, 0.50));
    say(format!("time to first token added by colloquy ({concurrency} concurrent streams, {} replies):", added.len()));
    say(format!(
        "  p50 {p50:.2} ms, p99 {:.2} ms (target p50 <= {TARGET_TTFT_P50_MS} ms: {})",
        millis(percentile(&mut added, 0.99)),
        crate::verdict(p50 <= TARGET_TTFT_P50_MS)
    ));
    say(format!(
        "  post -> first token, whole path (relay, Kafka, worker, provider, stream): p50 {:.1} ms, p99 {:.1} ms",
        millis(percentile(&mut total, 0.50)),
        millis(percentile(&mut total, 0.99))
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

/// Posts `content`, streams its reply; (content, when posted, when the first text arrived).
async fn first_token(api: &Api, conversation: Uuid, content: String) -> anyhow::Result<(String, Instant, Instant)> {
    let posted_at = Instant::now();
    let (status, body) =
        api.post(&format!("/conversations/{conversation}/messages"), &json!({"content": content})).await?;
    if status.as_u16() != 201 {
        bail!("post answered {status}: {body}");
    }
    let reply = body["reply_id"].as_str().context("no reply_id")?;
    let url = format!("{}/conversations/{conversation}/replies/{reply}/stream", api.base);
    let mut response = api.client.get(url).bearer_auth(&api.token).timeout(Duration::from_secs(120)).send().await?;
    let mut buf = String::new();
    while let Some(chunk) = response.chunk().await? {
        let at = Instant::now();
        buf.push_str(std::str::from_utf8(&chunk)?);
        let has_text = buf.lines().filter_map(|l| l.strip_prefix("data: ")).any(|data| {
            serde_json::from_str::<Value>(data)
                .ok()
                .and_then(|v| v["choices"][0]["delta"]["content"].as_str().map(|c| !c.is_empty()))
                == Some(true)
        });
        if has_text {
            return Ok((content, posted_at, at));
        }
    }
    bail!("the stream of {reply} ended without text")
}

/// The child process of measurement 2: opens `count` SSE streams spread over `paths`,
/// reads each to `[DONE]`, prints how many got there.
pub async fn sse_clients(count: usize, token: String, paths: Vec<String>) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let (client, token, url) = (client.clone(), token.clone(), paths[i % paths.len()].clone());
        tasks.spawn(async move {
            let mut response = client.get(url).bearer_auth(token).send().await.ok()?;
            let mut tail = String::new();
            while let Some(chunk) = response.chunk().await.ok()? {
                tail.push_str(&String::from_utf8_lossy(&chunk));
                if tail.contains("data: [DONE]") {
                    return Some(());
                }
                if tail.len() > 4096 {
                    tail.drain(..tail.len() - 64);
                }
            }
            None
        });
    }
    let mut done = 0;
    while let Some(outcome) = tasks.join_next().await {
        if matches!(outcome, Ok(Some(()))) {
            done += 1;
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{done}")?;
    Ok(())
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
    let (first, tokens, elapsed) = async {
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
    }
    .await?;
    let decode = elapsed.saturating_sub(first).as_secs_f64();
    say(format!(
        "local model (SmolLM2-135M, Q4_0 on the CPU): load {:.1} s, first token {:.0} ms, {tokens} tokens at {:.1} tokens/s",
        load.as_secs_f64(),
        first.as_secs_f64() * 1000.0,
        f64::from(tokens.saturating_sub(1)) / decode.max(1e-9)
    ));
    Ok(())
}
