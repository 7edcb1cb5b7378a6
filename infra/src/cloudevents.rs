//! The Kafka record format: CloudEvents 1.0, structured JSON mode.
//!
//! Each record's value is one CloudEvent; its key is the aggregate id (so one aggregate's
//! events stay in one partition, in order); headers repeat `ce_id`, `ce_type` and
//! `sequence` so consumers can route and dedupe without parsing JSON.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use colloquy_domain::event_catalog::cloud_event_type;
use colloquy_domain::metadata;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::event_store::StoredEvent;

/// The JSON shape of one record value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    /// Always `1.0`.
    pub specversion: String,
    /// The event id.
    pub id: Uuid,
    /// `colloquy/<aggregate>/<aggregate_id>`.
    pub source: String,
    /// `colloquy.<aggregate>.<EventType>.v<major>`.
    #[serde(rename = "type")]
    pub ty: String,
    /// When the event was recorded.
    pub time: DateTime<Utc>,
    /// The aggregate id.
    pub subject: String,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// The payload.
    pub data: Value,
    /// The aggregate's version after this event.
    pub sequence: i64,
    /// Global event-store position.
    pub position: i64,
    /// The payload version (`1.0`).
    pub eventversion: String,
    /// Who caused the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlationid: Option<String>,
    /// Causation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causationid: Option<String>,
}

/// Header names on every record.
pub mod headers {
    /// The CloudEvents id.
    pub const ID: &str = "ce_id";
    /// The CloudEvents type.
    pub const TYPE: &str = "ce_type";
    /// The aggregate sequence.
    pub const SEQUENCE: &str = "sequence";
    /// `content-type` of the structured-mode value.
    pub const CONTENT_TYPE: &str = "content-type";
    /// The structured-mode content type.
    pub const STRUCTURED: &str = "application/cloudevents+json; charset=UTF-8";
}

/// A record that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or not a CloudEvent.
    #[error("not a CloudEvent: {0}")]
    Json(#[from] serde_json::Error),
    /// A field has a value we cannot interpret.
    #[error("unexpected CloudEvent: {0}")]
    Invalid(String),
}

impl CloudEvent {
    /// The CloudEvent for a stored event.
    pub fn from_stored(e: &StoredEvent) -> Self {
        Self {
            specversion: "1.0".into(),
            id: e.event_id,
            source: format!("colloquy/{}/{}", e.aggregate_type.to_lowercase(), e.aggregate_id),
            ty: cloud_event_type(&e.aggregate_type, &e.event_type, &e.event_version),
            time: e.recorded_at,
            subject: e.aggregate_id.clone(),
            datacontenttype: "application/json".into(),
            data: e.data.clone(),
            sequence: e.sequence,
            position: e.position,
            eventversion: e.event_version.clone(),
            actor: e.meta(metadata::ACTOR).map(Into::into),
            correlationid: e.meta(metadata::CORRELATION_ID).map(Into::into),
            causationid: e.meta(metadata::CAUSATION_ID).map(Into::into),
        }
    }

    /// The stored event this CloudEvent carries.
    pub fn into_stored(self) -> Result<StoredEvent, DecodeError> {
        // type = colloquy.<aggregate>.<EventType>.v<major>; source = colloquy/<aggregate>/<id>
        let mut parts = self.ty.splitn(4, '.');
        let (Some("colloquy"), Some(_), Some(event_type)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(DecodeError::Invalid(format!("type {}", self.ty)));
        };
        let aggregate_lower = self
            .source
            .strip_prefix("colloquy/")
            .and_then(|s| s.split('/').next())
            .ok_or_else(|| DecodeError::Invalid(format!("source {}", self.source)))?;
        let aggregate_type = colloquy_domain::registry::find_lowercase(aggregate_lower)
            .ok_or_else(|| DecodeError::Invalid(format!("unknown aggregate {aggregate_lower}")))?
            .name
            .to_string();
        let mut metadata = HashMap::new();
        for (k, v) in [
            (metadata::ACTOR, self.actor),
            (metadata::CORRELATION_ID, self.correlationid),
            (metadata::CAUSATION_ID, self.causationid),
        ] {
            if let Some(v) = v {
                metadata.insert(k.to_string(), v);
            }
        }
        Ok(StoredEvent {
            event_id: self.id,
            position: self.position,
            aggregate_type,
            aggregate_id: self.subject,
            sequence: self.sequence,
            event_type: event_type.to_string(),
            event_version: self.eventversion,
            data: self.data,
            metadata,
            recorded_at: self.time,
        })
    }
}

/// Serialises a stored event as a record value.
pub fn encode(e: &StoredEvent) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&CloudEvent::from_stored(e))
}

/// Parses a record value.
pub fn decode(bytes: &[u8]) -> Result<StoredEvent, DecodeError> {
    let ce: CloudEvent = serde_json::from_slice(bytes)?;
    if ce.specversion != "1.0" {
        return Err(DecodeError::Invalid(format!("specversion {}", ce.specversion)));
    }
    ce.into_stored()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoredEvent {
        StoredEvent {
            event_id: Uuid::from_u128(42),
            position: 17,
            aggregate_type: "Conversation".into(),
            aggregate_id: Uuid::from_u128(5).to_string(),
            sequence: 3,
            event_type: "UserMessagePosted".into(),
            event_version: "1.0".into(),
            data: serde_json::json!({"message_id": Uuid::from_u128(6), "author_id": Uuid::from_u128(1), "content": "hi"}),
            metadata: HashMap::from([
                ("actor".to_string(), "user:1".to_string()),
                ("correlation_id".into(), "c-1".into()),
            ]),
            recorded_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn encode_has_every_required_attribute() {
        let v: Value = serde_json::from_slice(&encode(&sample()).unwrap()).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], Uuid::from_u128(42).to_string());
        assert_eq!(v["type"], "colloquy.conversation.UserMessagePosted.v1");
        assert_eq!(v["source"], format!("colloquy/conversation/{}", Uuid::from_u128(5)));
        assert_eq!(v["subject"], Uuid::from_u128(5).to_string());
        assert_eq!(v["sequence"], 3);
        assert_eq!(v["position"], 17);
        assert_eq!(v["actor"], "user:1");
        assert_eq!(v["correlationid"], "c-1");
        assert_eq!(v["data"]["content"], "hi");
        assert_eq!(v["time"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn decode_inverts_encode() {
        let e = sample();
        assert_eq!(decode(&encode(&e).unwrap()).unwrap(), e);
    }

    #[test]
    fn decode_rejects_garbage() {
        assert!(decode(b"not json").is_err());
        assert!(decode(br#"{"specversion":"0.3"}"#).is_err());
    }
}
