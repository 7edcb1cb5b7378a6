//! A steady load of commands from several users, spread over the API instances, each
//! command with a client-chosen id and an Idempotency-Key. The ledger records what was
//! acknowledged (2xx) and what is still owed an answer (a transport error, a 5xx, a
//! request still in progress), which is sent again, with the same key, once the fault is
//! over: as a careful client would.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

/// What one command creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creates {
    Conversation(Uuid),
    Message { conversation: Uuid, message: Uuid },
}

/// One command, ready to be sent (again).
#[derive(Debug, Clone)]
pub struct Request {
    pub user: usize,
    pub path: String,
    pub body: Value,
    pub key: String,
    pub creates: Creates,
}

/// How the API answered a request.
enum Answer {
    Acknowledged,
    /// A definite refusal (4xx other than "in progress" and rate limits).
    Refused(u16, String),
    /// No definite answer yet: send it again later.
    Owed(String),
}

/// Everything the load learned.
#[derive(Default)]
pub struct Ledger {
    pub acknowledged: Vec<Creates>,
    pub refused: Vec<(Request, u16, String)>,
    pub owed: Vec<Request>,
    pub sent: usize,
}

/// A logged-in user of the load.
#[derive(Clone)]
pub struct User {
    pub token: String,
    conversations: Arc<Mutex<Vec<Uuid>>>,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    ports: Vec<u16>,
    next: Arc<AtomicUsize>,
}

impl Client {
    pub fn new(ports: Vec<u16>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        Self { http, ports, next: Arc::new(AtomicUsize::new(0)) }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn url(&self, path: &str) -> String {
        let port = self.ports[self.next.fetch_add(1, Ordering::Relaxed) % self.ports.len()];
        format!("http://127.0.0.1:{port}/api/v1{path}")
    }

    /// Registers and logs in a user (retrying while the services settle).
    pub async fn user(&self) -> User {
        let email = format!("f{}@example.com", Uuid::new_v4().simple());
        let password = "a fault-tolerant password";
        let register = json!({"email": email, "full_name": "Fault Tester", "password": password});
        self.until_ok("/auth/register", &register).await;
        let login = self.until_ok("/auth/login", &json!({"email": email, "password": password})).await;
        let token = login["access_token"].as_str().expect("access_token").to_string();
        User { token, conversations: Arc::new(Mutex::new(Vec::new())) }
    }

    async fn until_ok(&self, path: &str, body: &Value) -> Value {
        let mut last = String::new();
        for _ in 0..100 {
            match self.http.post(self.url(path)).json(body).send().await {
                Ok(r) if r.status().is_success() => return r.json().await.expect("json"),
                Ok(r) => last = format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        panic!("{path} never succeeded: {last}");
    }

    async fn send(&self, token: &str, request: &Request) -> Answer {
        let response = self
            .http
            .post(self.url(&request.path))
            .bearer_auth(token)
            .header("Idempotency-Key", &request.key)
            .json(&request.body)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => return Answer::Owed(format!("transport: {e}")),
        };
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        match status {
            200..=299 => Answer::Acknowledged,
            409 if body.contains("request_in_progress") => Answer::Owed(body),
            409 if body.contains("concurrent_modification") => Answer::Owed(body),
            429 | 500..=599 => Answer::Owed(format!("{status} {body}")),
            _ => Answer::Refused(status, body),
        }
    }

    fn next_request(user_index: usize, user: &User, n: usize) -> Request {
        let conversations = user.conversations.lock().expect("lock").clone();
        let key = Uuid::new_v4().to_string();
        if conversations.is_empty() || n.is_multiple_of(8) {
            let id = Uuid::new_v4();
            return Request {
                user: user_index,
                path: "/conversations".into(),
                body: json!({"id": id, "title": format!("faults {n}")}),
                key,
                creates: Creates::Conversation(id),
            };
        }
        let conversation = conversations[n % conversations.len()];
        let message = Uuid::new_v4();
        Request {
            user: user_index,
            path: format!("/conversations/{conversation}/messages"),
            body: json!({"id": message, "content": format!("message {n}")}),
            key,
            creates: Creates::Message { conversation, message },
        }
    }

    fn record(ledger: &Mutex<Ledger>, users: &[User], request: Request, answer: Answer) {
        let mut ledger = ledger.lock().expect("lock");
        match answer {
            Answer::Acknowledged => {
                if let Creates::Conversation(id) = request.creates {
                    users[request.user].conversations.lock().expect("lock").push(id);
                }
                ledger.acknowledged.push(request.creates);
            }
            Answer::Refused(status, body) => ledger.refused.push((request, status, body)),
            Answer::Owed(_) => ledger.owed.push(request),
        }
    }

    /// Sends commands from every user, one at a time each, until `stop` is set.
    pub async fn run(&self, users: &[User], ledger: &Arc<Mutex<Ledger>>, stop: &Arc<AtomicBool>) {
        let mut tasks = Vec::new();
        for (index, user) in users.iter().enumerate() {
            let (client, users, ledger, stop, user) =
                (self.clone(), users.to_vec(), ledger.clone(), stop.clone(), user.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let request = Self::next_request(index, &user, n);
                    let answer = client.send(&user.token, &request).await;
                    let owed = matches!(answer, Answer::Owed(_));
                    ledger.lock().expect("lock").sent += 1;
                    Self::record(&ledger, &users, request, answer);
                    if owed {
                        // The fault is on: do not hammer it.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("load task");
        }
    }

    /// Sends every owed request again (same key, same body) until each has a definite
    /// answer; what still has none after `within` is returned.
    pub async fn settle(
        &self,
        users: &[User],
        ledger: &Arc<Mutex<Ledger>>,
        within: Duration,
    ) -> Vec<(Request, String)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let owed = std::mem::take(&mut ledger.lock().expect("lock").owed);
            if owed.is_empty() {
                return Vec::new();
            }
            let mut still = Vec::new();
            for request in owed {
                match self.send(&users[request.user].token, &request).await {
                    Answer::Owed(why) => still.push((request, why)),
                    answer => Self::record(ledger, users, request, answer),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return still;
            }
            ledger.lock().expect("lock").owed.extend(still.into_iter().map(|(r, _)| r));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
