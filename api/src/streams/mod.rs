//! Relaying reply streams to clients: the [`hub::Hub`] (one Redis subscription per API
//! instance), SSE in OpenAI's `chat.completion.chunk` format ([`sse`]) and the WebSocket
//! session carrying every reply of a user's conversations ([`ws`]).

pub mod collect;
pub mod hub;
pub mod sse;
pub mod ws;

use prometheus::IntGauge;

/// Counts one active stream or session in a gauge for as long as it lives.
pub struct Active(IntGauge);

impl Active {
    /// Increments `gauge` now and decrements it when dropped.
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}
