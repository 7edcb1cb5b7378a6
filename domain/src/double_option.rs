//! Serde for `Option<Option<T>>` telling "absent" from "explicitly null", for update events
//! where a field may be left as it is (absent), set, or cleared (`null`). Use with
//! `#[serde(default, skip_serializing_if = "Option::is_none", with = "crate::double_option")]`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Writes `Some(None)` as `null` and `Some(Some(v))` as `v` (`None` is skipped by the field).
pub fn serialize<S: Serializer, T: Serialize>(v: &Option<Option<T>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(inner) => inner.serialize(s),
        None => s.serialize_none(),
    }
}

/// Reads a present field (`null` included) as `Some`; an absent one defaults to `None`.
pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use crate::knowledge::DocumentUpdated;

    // Absent, null and a value read back as three different updates.
    #[test]
    fn absent_null_and_a_value_stay_distinct() {
        for category in [None, Some(None), Some(Some("HR".to_string()))] {
            let update = DocumentUpdated { category, ..DocumentUpdated::default() };
            let json = serde_json::to_value(&update).unwrap();
            assert_eq!(json.get("category").is_some(), update.category.is_some(), "{json}");
            assert_eq!(serde_json::from_value::<DocumentUpdated>(json).unwrap(), update);
        }
    }
}
