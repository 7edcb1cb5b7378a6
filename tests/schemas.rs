//! The published JSON Schemas (schemas/) agree with the Rust event types, and real
//! payloads carry every field their schema requires.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use serde_json::Value;

#[test]
fn published_schemas_match_the_rust_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let mut expected_files = Vec::new();
    for (cloud_type, e) in colloquy_domain::aggregates().iter().flat_map(|a| a.cloud_event_types()) {
        let name = format!("{cloud_type}.json");
        let published = std::fs::read_to_string(dir.join(&name))
            .unwrap_or_else(|_| panic!("schemas/{name} is missing; run `colloquy schemas`"));
        let generated = serde_json::to_string_pretty(&e.schema).unwrap() + "\n";
        assert_eq!(published, generated, "schemas/{name} is stale; run `colloquy schemas`");
        expected_files.push(name);
    }
    let mut present: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|f| f.unwrap().file_name().to_string_lossy().into_owned()).collect();
    present.sort();
    expected_files.sort();
    assert_eq!(present, expected_files, "schemas/ holds exactly one file per event type");
}

#[test]
fn serialized_payloads_have_every_required_field() {
    use colloquy_domain::conversation::*;
    use colloquy_domain::user::*;
    let id = uuid::Uuid::from_u128(1);
    let samples: Vec<(&str, Value)> = vec![
        (
            "UserRegistered",
            serde_json::to_value(UserRegistered {
                user_id: id,
                email: colloquy_domain::values::EmailAddress::parse("a@b.co").unwrap(),
                full_name: "A".into(),
                role: Role::Member,
            })
            .unwrap(),
        ),
        ("ProfileUpdated", serde_json::to_value(ProfileUpdated::default()).unwrap()),
        ("UserDeactivated", serde_json::to_value(UserDeactivated { reason: None }).unwrap()),
        (
            "ConversationStarted",
            serde_json::to_value(ConversationStarted {
                conversation_id: id,
                owner_id: id,
                title: "t".into(),
                kind: ConversationKind::Chat,
                model: "m".into(),
                system_prompt: None,
            })
            .unwrap(),
        ),
        ("ConversationRenamed", serde_json::to_value(ConversationRenamed { title: "t".into() }).unwrap()),
        ("ConversationArchived", serde_json::to_value(ConversationArchived {}).unwrap()),
        ("ConversationUnarchived", serde_json::to_value(ConversationUnarchived {}).unwrap()),
        ("ConversationDeleted", serde_json::to_value(ConversationDeleted {}).unwrap()),
        (
            "UserMessagePosted",
            serde_json::to_value(UserMessagePosted { message_id: id, author_id: id, content: "c".into() }).unwrap(),
        ),
    ];
    let catalog: Vec<_> = colloquy_domain::aggregates().iter().flat_map(|a| a.events.iter()).collect();
    assert_eq!(samples.len(), catalog.len(), "a sample for every event type");
    for (event_type, payload) in samples {
        let schema =
            serde_json::to_value(&catalog.iter().find(|e| e.event_type == event_type).unwrap().schema).unwrap();
        let properties = schema["properties"].as_object().cloned().unwrap_or_default();
        for required in schema["required"].as_array().cloned().unwrap_or_default() {
            assert!(payload.get(required.as_str().unwrap()).is_some(), "{event_type} lacks {required}");
        }
        for field in payload.as_object().unwrap().keys() {
            assert!(properties.contains_key(field), "{event_type}.{field} is not in its schema");
        }
    }
}
