//! The hub: ONE Redis pub/sub connection per API instance, subscribed to every user's reply
//! channel, fanning each entry out to this instance's SSE and WebSocket clients of that
//! user through a bounded broadcast channel per user. Clients never open Redis connections
//! of their own and never block on Redis streams; they read a stream only to catch up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use colloquy_infra::reply_streams::{ReplyMessage, ReplyStreams};
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Entries a user's channel holds for its slowest local subscriber before that one lags
/// (an SSE client then catches up from Redis; a WebSocket client is closed as too slow).
pub const USER_CHANNEL_CAPACITY: usize = 1024;

/// The first wait before reconnecting to Redis; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum HubEvent {
    /// An entry of one of the user's replies.
    Entry(Arc<ReplyMessage>),
    /// The hub (re)subscribed after a time without a connection: entries may have been
    /// missed; read them from the streams.
    Resync,
}

/// What a subscriber listens to: all of a user's replies (the WebSocket), or one reply (an
/// SSE stream: it is woken only by its own reply's entries, however many replies its user
/// streams at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    User(Uuid),
    Reply(Uuid),
}

type Channels = Arc<Mutex<HashMap<Key, broadcast::Sender<HubEvent>>>>;

/// The fan-out point for reply entries; cheap to clone.
#[derive(Clone, Default)]
pub struct Hub {
    users: Channels,
}

/// One local subscriber's receipt of entries; unsubscribes when dropped.
pub struct Subscription {
    rx: broadcast::Receiver<HubEvent>,
    key: Key,
    users: Channels,
}

impl Subscription {
    /// The next event; `Err(Lagged)` when this subscriber fell more than
    /// [`USER_CHANNEL_CAPACITY`] events behind, `Err(Closed)` never while the hub exists.
    pub async fn recv(&mut self) -> Result<HubEvent, broadcast::error::RecvError> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Subscribing happens under the same lock, so a count of one (this receiver, not yet
        // dropped) means nobody else listens to this user here.
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        if users.get(&self.key).is_some_and(|tx| tx.receiver_count() <= 1) {
            users.remove(&self.key);
        }
    }
}

impl Hub {
    /// A hub with no subscribers and no connection yet (see [`Hub::spawn`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts receiving `user`'s entries (from the next one the hub receives).
    pub fn subscribe(&self, user: Uuid) -> Subscription {
        self.subscribe_to(Key::User(user))
    }

    /// Starts receiving the entries of one reply (from the next one the hub receives).
    pub fn subscribe_reply(&self, reply_id: Uuid) -> Subscription {
        self.subscribe_to(Key::Reply(reply_id))
    }

    fn subscribe_to(&self, key: Key) -> Subscription {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let rx = users.entry(key).or_insert_with(|| broadcast::channel(USER_CHANNEL_CAPACITY).0).subscribe();
        Subscription { rx, key, users: self.users.clone() }
    }

    /// Users with a local subscriber to all their replies.
    pub fn users(&self) -> usize {
        self.users.lock().unwrap_or_else(PoisonError::into_inner).keys().filter(|k| matches!(k, Key::User(_))).count()
    }

    fn deliver(&self, user: Uuid, message: ReplyMessage) {
        let users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let (to_user, to_reply) = (users.get(&Key::User(user)), users.get(&Key::Reply(message.reply_id)));
        if to_user.is_none() && to_reply.is_none() {
            return;
        }
        let event = HubEvent::Entry(Arc::new(message));
        // No receiver left is fine: the last one is unsubscribing.
        for tx in [to_user, to_reply].into_iter().flatten() {
            let _ = tx.send(event.clone());
        }
    }

    fn resync_all(&self) {
        let users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        for tx in users.values() {
            let _ = tx.send(HubEvent::Resync);
        }
    }

    /// Runs the hub's Redis subscription until `shutdown`: (re)connects with backoff when
    /// Redis drops, and after each (re)subscription tells every subscriber to resync.
    pub fn spawn(&self, streams: ReplyStreams, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let hub = self.clone();
        tokio::spawn(async move { hub.run(streams, shutdown).await })
    }

    async fn run(self, streams: ReplyStreams, shutdown: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        while !shutdown.is_cancelled() {
            let subscribed = tokio::select! {
                _ = shutdown.cancelled() => return,
                s = streams.user_messages() => s,
            };
            match subscribed {
                Ok(messages) => {
                    tracing::info!("Reply hub subscribed.");
                    backoff = FIRST_BACKOFF;
                    self.resync_all();
                    futures::pin_mut!(messages);
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            next = messages.next() => match next {
                                Some((user, message)) => self.deliver(user, message),
                                None => break,
                            },
                        }
                    }
                    tracing::warn!("Reply hub lost its Redis subscription; reconnecting.");
                }
                Err(e) => tracing::warn!(error = %e, ?backoff, "Reply hub could not subscribe; retrying."),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use colloquy_infra::reply_streams::StreamEntry;

    use super::*;

    fn message() -> ReplyMessage {
        ReplyMessage {
            reply_id: Uuid::new_v4(),
            conversation_id: Uuid::new_v4(),
            id: "1-0".into(),
            entry: StreamEntry::Delta { text: "x".into() },
        }
    }

    #[tokio::test]
    async fn entries_reach_only_their_users_subscribers() {
        let hub = Hub::new();
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let mut a1 = hub.subscribe(alice);
        let mut a2 = hub.subscribe(alice);
        let mut b = hub.subscribe(bob);
        let m = message();
        hub.deliver(alice, m.clone());
        for sub in [&mut a1, &mut a2] {
            match sub.recv().await {
                Ok(HubEvent::Entry(got)) => assert_eq!(*got, m),
                other => panic!("{other:?}"),
            }
        }
        assert!(b.rx.try_recv().is_err(), "bob heard alice's entry");
        hub.resync_all();
        assert!(matches!(b.recv().await, Ok(HubEvent::Resync)));
    }

    #[tokio::test]
    async fn the_last_subscriber_leaving_forgets_the_user() {
        let hub = Hub::new();
        let user = Uuid::new_v4();
        let first = hub.subscribe(user);
        let second = hub.subscribe(user);
        assert_eq!(hub.users(), 1);
        drop(first);
        assert_eq!(hub.users(), 1);
        drop(second);
        assert_eq!(hub.users(), 0);
        // Nobody listening: delivering is a no-op.
        hub.deliver(user, message());
        assert_eq!(hub.users(), 0);
    }

    /// A TCP proxy to the local Redis whose connections can be cut, as a network or a
    /// server restart would.
    struct Proxy {
        port: u16,
        connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
        _accept: tokio::task::JoinHandle<()>,
    }

    impl Proxy {
        async fn start() -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
            let registry = connections.clone();
            let accept = tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect("127.0.0.1:6379").await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    registry.lock().unwrap().push(task);
                }
            });
            Self { port, connections, _accept: accept }
        }

        fn cut(&self) {
            for task in self.connections.lock().unwrap().drain(..) {
                task.abort();
            }
        }
    }

    async fn next_entry(sub: &mut Subscription) -> HubEvent {
        tokio::time::timeout(Duration::from_secs(20), sub.recv()).await.expect("no event").expect("lagged")
    }

    #[tokio::test]
    async fn the_hub_relays_redis_and_resubscribes_after_losing_its_connection() {
        use colloquy_infra::redis_store::RedisStore;
        use colloquy_infra::reply_streams::ReplyTarget;
        use colloquy_infra::settings::{RedisSettings, StreamSettings};

        let prefix = format!("colloquy_test_{}:", &Uuid::new_v4().simple().to_string()[..12]);
        let direct =
            RedisStore::connect(&RedisSettings { key_prefix: prefix.clone(), ..Default::default() }).await.unwrap();
        let writer = ReplyStreams::new(&direct, &StreamSettings::default());
        let proxy = Proxy::start().await;
        let url = format!("redis://127.0.0.1:{}/0", proxy.port);
        let proxied =
            RedisStore::connect(&RedisSettings { url, key_prefix: prefix, ..Default::default() }).await.unwrap();
        let hub = Hub::new();
        let user = Uuid::new_v4();
        let mut sub = hub.subscribe(user);
        let shutdown = CancellationToken::new();
        let task = hub.spawn(ReplyStreams::new(&proxied, &StreamSettings::default()), shutdown.clone());
        // Every (re)subscription announces itself.
        assert!(matches!(next_entry(&mut sub).await, HubEvent::Resync));
        let target = ReplyTarget { reply_id: Uuid::new_v4(), conversation_id: Uuid::new_v4(), owner_id: user };
        let id = writer.append(&target, &StreamEntry::Delta { text: "before".into() }).await.unwrap();
        match next_entry(&mut sub).await {
            HubEvent::Entry(m) => assert_eq!((m.id.as_str(), m.reply_id), (id.as_str(), target.reply_id)),
            other => panic!("{other:?}"),
        }

        proxy.cut();
        assert!(matches!(next_entry(&mut sub).await, HubEvent::Resync), "no resubscription");
        let id = writer.append(&target, &StreamEntry::Delta { text: "after".into() }).await.unwrap();
        match next_entry(&mut sub).await {
            HubEvent::Entry(m) => assert_eq!(m.id, id),
            other => panic!("{other:?}"),
        }

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task).await.expect("the hub did not stop").unwrap();
        direct.delete_prefixed("").await.unwrap();
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_it_lagged() {
        let hub = Hub::new();
        let user = Uuid::new_v4();
        let mut sub = hub.subscribe(user);
        for _ in 0..USER_CHANNEL_CAPACITY + 1 {
            hub.deliver(user, message());
        }
        assert!(matches!(sub.recv().await, Err(broadcast::error::RecvError::Lagged(1))));
    }
}
