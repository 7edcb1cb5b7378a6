//! Prometheus metrics for every queue-like thing, rendered in the text format on `/metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The process's metrics. Create one per process and share it.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by method, route and status.
    pub http_requests: IntCounterVec,
    /// HTTP latency by method and route.
    pub http_latency: HistogramVec,
    /// Command outcomes by aggregate and outcome (`ok`, `rejected`, `conflict`, `error`).
    pub commands: IntCounterVec,
    /// Appends that lost an optimistic-concurrency race and were decided again, by aggregate.
    pub command_retries: IntCounterVec,
    /// Session checks of access tokens (one per authenticated request).
    pub session_checks: prometheus::IntCounter,
    /// Statements those checks took (concurrent requests' checks share one): checks ÷
    /// statements is the mean batch.
    pub session_check_statements: prometheus::IntCounter,
    /// Events in the store the relay has not yet published.
    pub relay_lag_events: IntGauge,
    /// 1 while this process's relay holds the relay lock and publishes, 0 while it stands by.
    pub relay_active: IntGauge,
    /// Attempts this process's relay made to take the relay lock.
    pub relay_lock_attempts: prometheus::IntCounter,
    /// Events published by the relay.
    pub relay_published: IntCounterVec,
    /// Consumer lag per projection (messages behind the high watermark).
    pub consumer_lag: IntGaugeVec,
    /// Events applied by projections.
    pub projection_applied: IntCounterVec,
    /// Messages sent to the dead-letter topic, by consumer.
    pub dlq_messages: IntCounterVec,
    /// Batches a projection had to retry (its database failed), by projection.
    pub projection_retries: IntCounterVec,
    /// Replies this process's assistant is streaming.
    pub assistant_active_replies: IntGauge,
    /// Replies the assistant ended, by outcome (`completed`, `failed`, `cancelled`).
    pub assistant_replies: IntCounterVec,
    /// Conversations the assistant tried to name, by outcome (`named`; `kept`: the owner's
    /// title won; `failed`).
    pub assistant_titles: IntCounterVec,
    /// Queries currently waiting for a read model to reach their `min_version`.
    pub min_version_waiting: IntGauge,
    /// SSE reply streams this API instance is serving.
    pub sse_streams_active: IntGauge,
    /// WebSocket sessions this API instance holds.
    pub ws_sessions_active: IntGauge,
    /// WebSocket clients closed because they could not keep up with their messages.
    pub ws_slow_clients_dropped: prometheus::IntCounter,
}

fn must<T>(r: Result<T, prometheus::Error>) -> T {
    // Metric construction only fails on invalid names, which are constants here.
    match r {
        Ok(v) => v,
        Err(e) => panic!("invalid metric definition: {e}"),
    }
}

impl Metrics {
    /// The registry, for metrics other crates register (the provider router's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("colloquy".into()), None).unwrap_or_default();
        let http_requests =
            must(IntCounterVec::new(Opts::new("http_requests_total", "HTTP requests"), &["method", "route", "status"]));
        let http_latency = must(HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["method", "route"],
        ));
        let commands =
            must(IntCounterVec::new(Opts::new("commands_total", "Commands handled"), &["aggregate", "outcome"]));
        let command_retries = must(IntCounterVec::new(
            Opts::new("command_retries_total", "Appends retried after losing a concurrency race"),
            &["aggregate"],
        ));
        let session_checks =
            must(prometheus::IntCounter::new("session_checks_total", "Session checks of access tokens"));
        let session_check_statements = must(prometheus::IntCounter::new(
            "session_check_statements_total",
            "Statements the session checks took (concurrent checks share one)",
        ));
        let relay_lag_events = must(IntGauge::new("relay_lag_events", "Committed events not yet published to Kafka"));
        let relay_active = must(IntGauge::new("relay_active", "1 while this relay is the active one"));
        let relay_lock_attempts =
            must(prometheus::IntCounter::new("relay_lock_attempts_total", "Attempts to become the active relay"));
        let relay_published =
            must(IntCounterVec::new(Opts::new("relay_published_total", "Events published"), &["topic"]));
        let consumer_lag = must(IntGaugeVec::new(
            Opts::new("consumer_lag_messages", "Messages behind the high watermark, per consumer"),
            &["consumer"],
        ));
        let projection_applied = must(IntCounterVec::new(
            Opts::new("projection_events_total", "Events handled by projections"),
            &["projection", "outcome"],
        ));
        let dlq_messages =
            must(IntCounterVec::new(Opts::new("dlq_messages_total", "Messages sent to the DLQ"), &["consumer"]));
        let projection_retries = must(IntCounterVec::new(
            Opts::new("projection_retries_total", "Projection batches retried after a database failure"),
            &["projection"],
        ));
        let min_version_waiting =
            must(IntGauge::new("min_version_waiting", "Queries waiting for a read model to reach their min_version"));
        let sse_streams_active = must(IntGauge::new("sse_streams_active", "SSE reply streams being served"));
        let ws_sessions_active = must(IntGauge::new("ws_sessions_active", "WebSocket sessions open"));
        let ws_slow_clients_dropped = must(prometheus::IntCounter::new(
            "ws_slow_clients_dropped_total",
            "WebSocket clients closed for falling behind their send buffer",
        ));
        let assistant_active_replies =
            must(IntGauge::new("assistant_active_replies", "Replies this process's assistant is streaming"));
        let assistant_replies = must(IntCounterVec::new(
            Opts::new("assistant_replies_total", "Replies the assistant ended, by outcome"),
            &["outcome"],
        ));
        let assistant_titles = must(IntCounterVec::new(
            Opts::new("assistant_titles_total", "Conversations the assistant tried to name, by outcome"),
            &["outcome"],
        ));
        for c in [
            Box::new(assistant_active_replies.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(assistant_replies.clone()),
            Box::new(assistant_titles.clone()),
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_latency.clone()),
            Box::new(commands.clone()),
            Box::new(command_retries.clone()),
            Box::new(session_checks.clone()),
            Box::new(session_check_statements.clone()),
            Box::new(relay_lag_events.clone()),
            Box::new(relay_published.clone()),
            Box::new(relay_active.clone()),
            Box::new(relay_lock_attempts.clone()),
            Box::new(consumer_lag.clone()),
            Box::new(projection_applied.clone()),
            Box::new(dlq_messages.clone()),
            Box::new(min_version_waiting.clone()),
            Box::new(projection_retries.clone()),
            Box::new(sse_streams_active.clone()),
            Box::new(ws_sessions_active.clone()),
            Box::new(ws_slow_clients_dropped.clone()),
        ] {
            must(registry.register(c));
        }
        Self {
            registry,
            assistant_active_replies,
            assistant_replies,
            assistant_titles,
            http_requests,
            http_latency,
            commands,
            command_retries,
            session_checks,
            session_check_statements,
            relay_lag_events,
            relay_published,
            relay_active,
            relay_lock_attempts,
            consumer_lag,
            projection_applied,
            dlq_messages,
            projection_retries,
            min_version_waiting,
            sse_streams_active,
            ws_sessions_active,
            ws_slow_clients_dropped,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new().encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
