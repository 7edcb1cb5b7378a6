//! The outside world of `--assistant`, in a child process of its own so that neither its CPU
//! nor its memory counts as colloquy's: the fake provider with the clients that measure the
//! time to first token (`ttft-clients`), and the SSE clients that hold streams open
//! (`sse-clients`).
//!
//! `ttft-clients` speaks one JSON line each way over stdin/stdout: it prints the fake
//! provider's URL, reads the job (API base, token, conversations, rounds), runs both phases
//! and prints the measured durations.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use colloquy_providers::testing::{Chunk, FakeProvider, Finish, Script};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

use crate::{http_client, Api};

/// Chunks of a paced reply in the steady phase, and the pause before each after the first:
/// 200 chunks (a few paragraphs) at 40 chunks/s, a hosted model's usual pace, so a reply
/// streams for about 5 s, as chat answers do.
const PACED_CHUNKS: usize = 200;
const PACE: Duration = Duration::from_millis(25);

/// One measured reply: when it was posted, when the fake received its request (its first
/// chunk leaves at once), when the client read the first text.
struct Sample {
    content: String,
    posted_at: Instant,
    first_at: Instant,
}

/// The child's side of `ttft-clients`.
pub async fn ttft_clients() -> anyhow::Result<()> {
    let fake = FakeProvider::start().await;
    emit(&json!({ "base_url": fake.base_url() }))?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let job: Value = serde_json::from_str(&lines.next_line().await?.context("no job on stdin")?)?;
    let api = Api {
        client: http_client(1)?,
        base: job["base"].as_str().context("job without base")?.to_string(),
        token: job["token"].as_str().context("job without token")?.to_string(),
    };
    let conversations: Vec<Uuid> = serde_json::from_value(job["conversations"].clone())?;
    let rounds = job["rounds"].as_u64().context("job without rounds")? as usize;

    // Burst: every conversation posts at once, the fake answers each at once.
    fake.set_default(Script::reply(&["first ", "second ", "third ", "fourth"]));
    let mut burst = Vec::new();
    for round in 0..rounds {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, conversation) in conversations.iter().enumerate() {
            let (api, conversation) = (api.with_client(http_client(1)?), *conversation);
            tasks.spawn(async move { reply(&api, conversation, format!("burst {round}-{i}"), None).await });
        }
        while let Some(done) = tasks.join_next().await {
            burst.push(done??);
        }
    }

    // Steady: each conversation's client posts, streams the paced reply to its end and posts
    // again, so about as many streams as conversations are always in flight. Its first reply
    // (the start, all at once) is not counted.
    let chunks = (0..PACED_CHUNKS)
        .map(|i| Chunk { delay: if i == 0 { Duration::ZERO } else { PACE }, text: format!("w{i} ") })
        .collect();
    fake.set_default(Script::Reply { chunks, usage: None, finish: Finish::Stop });
    let open = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (open, finished) = (open.clone(), finished.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !finished.load(Ordering::Relaxed) {
                tick.tick().await;
                samples.push(open.load(Ordering::Relaxed));
            }
            samples
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (i, conversation) in conversations.iter().enumerate() {
        let (api, conversation, open) = (api.with_client(http_client(1)?), *conversation, open.clone());
        tasks.spawn(async move {
            let mut samples = Vec::new();
            for round in 0..=rounds {
                let sample = reply(&api, conversation, format!("steady {round}-{i}"), Some(&open)).await?;
                if round > 0 {
                    samples.push(sample);
                }
            }
            anyhow::Ok(samples)
        });
    }
    let mut steady = Vec::new();
    while let Some(done) = tasks.join_next().await {
        steady.extend(done??);
    }
    finished.store(true, Ordering::Relaxed);
    let in_flight = sampler.await?;
    // The mean number of open streams from the first one opened to the last one closed.
    let first = in_flight.iter().position(|n| *n > 0).unwrap_or(0);
    let last = in_flight.iter().rposition(|n| *n > 0).map_or(0, |i| i + 1);
    let busy = in_flight.get(first..last).unwrap_or_default();
    let requests = fake.requests();
    let received = |content: &str| {
        requests
            .iter()
            .find(|r| {
                r.body["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str())
                    == Some(content)
            })
            .map(|r| r.at)
    };
    let phase = |samples: &[Sample]| -> anyhow::Result<Value> {
        let (mut added, mut total) = (Vec::new(), Vec::new());
        for s in samples {
            let Some(at) = received(&s.content) else { bail!("the fake never saw {}", s.content) };
            added.push(s.first_at.saturating_duration_since(at).as_micros() as u64);
            total.push(s.first_at.duration_since(s.posted_at).as_micros() as u64);
        }
        Ok(json!({ "added_us": added, "total_us": total }))
    };
    let mean_open = busy.iter().sum::<usize>() as f64 / busy.len().max(1) as f64;
    emit(&json!({
        "burst": phase(&burst)?,
        "steady": phase(&steady)?,
        "steady_mean_open": mean_open,
        "paced_chunks": PACED_CHUNKS,
        "pace_ms": PACE.as_millis() as u64,
    }))
}

/// Posts `content` and streams its reply: to the first text, or with `open` (counting the
/// streams in flight) to its end.
async fn reply(api: &Api, conversation: Uuid, content: String, open: Option<&AtomicUsize>) -> anyhow::Result<Sample> {
    let posted_at = Instant::now();
    let (status, body) =
        api.post(&format!("/conversations/{conversation}/messages"), &json!({"content": content})).await?;
    if status.as_u16() != 201 {
        bail!("post answered {status}: {body}");
    }
    let reply = body["reply_id"].as_str().context("no reply_id")?;
    let url = format!("{}/conversations/{conversation}/replies/{reply}/stream", api.base);
    let mut response = api.client.get(url).bearer_auth(&api.token).timeout(Duration::from_secs(120)).send().await?;
    let _open = open.map(InFlight::new);
    let (mut buf, mut first_at) = (String::new(), None);
    while let Some(chunk) = response.chunk().await? {
        let at = Instant::now();
        buf.push_str(std::str::from_utf8(&chunk)?);
        if first_at.is_none() && has_text(&buf) {
            first_at = Some(at);
            if open.is_none() {
                break;
            }
        }
        if buf.contains("data: [DONE]") {
            break;
        }
    }
    let Some(first_at) = first_at else { bail!("the stream of {reply} ended without text") };
    Ok(Sample { content, posted_at, first_at })
}

/// Whether an SSE body so far holds a chunk with text.
fn has_text(body: &str) -> bool {
    body.lines().filter_map(|l| l.strip_prefix("data: ")).any(|data| {
        serde_json::from_str::<Value>(data)
            .ok()
            .and_then(|v| v["choices"][0]["delta"]["content"].as_str().map(|c| !c.is_empty()))
            == Some(true)
    })
}

/// Counts a stream as open while it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(open: &'a AtomicUsize) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One JSON line to the parent.
fn emit(value: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}")?;
    out.flush()?;
    Ok(())
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
    emit(&json!(done)).map(|_| ())
}
