//! A minimal SSE client for the reply streams (`text/event-stream` over reqwest).

use std::time::Duration;

use serde_json::Value;

use super::ApiClient;

/// How long one read of a stream may take before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// One server-sent event (comments are kept apart).
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Option<String>,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{}: {e}", self.data))
    }

    pub fn content(&self) -> String {
        self.json()["choices"][0]["delta"]["content"].as_str().unwrap_or_default().to_string()
    }

    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }
}

pub enum Item {
    Event(Event),
    Comment(String),
}

/// A minimal SSE client over reqwest.
pub struct Sse {
    res: reqwest::Response,
    buf: String,
}

impl Sse {
    pub async fn open(client: &ApiClient, token: &str, path: &str, last_event_id: Option<&str>) -> Self {
        let mut req = client.http.get(client.url(path)).bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200, "{path}");
        let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).map(String::from);
        assert_eq!(header("content-type").as_deref(), Some("text/event-stream"));
        assert_eq!(header("cache-control").as_deref(), Some("no-cache"));
        assert_eq!(header("x-accel-buffering").as_deref(), Some("no"));
        Self { res, buf: String::new() }
    }

    /// The next event or comment; `None` when the server ended the response.
    pub async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = Event { id: None, data: String::new() };
                for line in block.lines() {
                    if let Some(comment) = line.strip_prefix(':') {
                        return Some(Item::Comment(comment.trim().to_string()));
                    } else if let Some(id) = line.strip_prefix("id: ") {
                        event.id = Some(id.to_string());
                    } else if let Some(data) = line.strip_prefix("data: ") {
                        event.data.push_str(data);
                    }
                }
                return Some(Item::Event(event));
            }
            let chunk =
                tokio::time::timeout(READ_TIMEOUT, self.res.chunk()).await.expect("SSE read timed out").unwrap();
            match chunk {
                Some(bytes) => self.buf.push_str(std::str::from_utf8(&bytes).unwrap()),
                None => return None,
            }
        }
    }

    pub async fn next_event(&mut self) -> Event {
        loop {
            match self.next().await {
                Some(Item::Event(e)) => return e,
                Some(Item::Comment(_)) => {}
                None => panic!("the stream ended early"),
            }
        }
    }

    /// Every event up to and including `[DONE]`; the response must end right after it.
    pub async fn until_done(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let e = self.next_event().await;
            let done = e.is_done();
            events.push(e);
            if done {
                break;
            }
        }
        assert!(self.next().await.is_none(), "events after [DONE]");
        events
    }
}

pub fn text_of(events: &[Event]) -> String {
    events.iter().filter(|e| !e.is_done()).map(Event::content).collect()
}
