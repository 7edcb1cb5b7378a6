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

/// Every aggregate's sample events (declared next to its events) carry every field their
/// published schema requires and no field it does not name; every event type has a sample.
#[test]
fn serialized_payloads_have_every_required_field() {
    for aggregate in colloquy_domain::aggregates() {
        for spec in &aggregate.events {
            let samples: Vec<&Value> =
                aggregate.examples.iter().filter(|(t, _)| t == spec.event_type).map(|(_, v)| v).collect();
            assert!(!samples.is_empty(), "{}.{} has no sample", aggregate.name, spec.event_type);
            let schema = serde_json::to_value(&spec.schema).unwrap();
            let properties = schema["properties"].as_object().cloned().unwrap_or_default();
            for payload in samples {
                for required in schema["required"].as_array().cloned().unwrap_or_default() {
                    assert!(payload.get(required.as_str().unwrap()).is_some(), "{} lacks {required}", spec.event_type);
                }
                for field in payload.as_object().unwrap().keys() {
                    assert!(properties.contains_key(field), "{}.{field} is not in its schema", spec.event_type);
                }
            }
        }
    }
}
