//! Checks JSON text the way building a `serde_json::Value` would, without
//! building it: the same parser, the same nesting limit, every string
//! (keys too) decoded and so checked for lone surrogate escapes, every
//! number checked to be in range, and an object whose first key is
//! serde_json's raw-value token read as `Value` reads it; nothing is
//! allocated for what is read.

use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The key by which serde_json (with its `raw_value` feature, on in this
/// workspace) marks an object as a raw value: `Value` takes the member as
/// a string of JSON text, parses that, and refuses any member after it.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Whether `text` is exactly one JSON value that `serde_json` can parse
/// into a `Value`.
pub fn check(text: &[u8]) -> Result<(), serde_json::Error> {
    serde_json::from_slice::<Checked>(text).map(drop)
}

/// A JSON value that was read and let go.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Checked, A::Error> {
        while items.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<Checked, A::Error> {
        match members.next_key_seed(ClassifyKey)? {
            None => {}
            Some(FirstKey::RawValue) => {
                // `Value` refuses any other member after this one.
                members
                    .next_value_seed(EmbeddedJson)
                    .map_err(|_| reserved_key())?;
                if members.next_key::<de::IgnoredAny>()?.is_some() {
                    return Err(reserved_key());
                }
            }
            Some(FirstKey::Plain) => {
                members.next_value::<Checked>()?;
                while members.next_entry::<Checked, Checked>()?.is_some() {}
            }
        }
        Ok(Checked)
    }
}

/// Why an object led by [`RAW_VALUE_TOKEN`] is refused, in the client's
/// terms (serde_json's own message names a raw value or a trailing comma).
fn reserved_key<E: de::Error>() -> E {
    E::custom(format!(
        "the key {RAW_VALUE_TOKEN:?} is reserved: as an object's first key it must \
         hold a string of JSON text and be the object's only member"
    ))
}

/// What an object's first key says the object is.
enum FirstKey {
    /// serde_json's raw-value token.
    RawValue,
    /// Any other key.
    Plain,
}

/// Reads a key into a [`FirstKey`].
struct ClassifyKey;

impl<'de> DeserializeSeed<'de> for ClassifyKey {
    type Value = FirstKey;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<FirstKey, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for ClassifyKey {
    type Value = FirstKey;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<FirstKey, E> {
        Ok(if key == RAW_VALUE_TOKEN {
            FirstKey::RawValue
        } else {
            FirstKey::Plain
        })
    }
}

/// A string holding JSON text, checked in turn.
struct EmbeddedJson;

impl<'de> DeserializeSeed<'de> for EmbeddedJson {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for EmbeddedJson {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("raw value")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        check(text.as_bytes()).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    /// Accepts and refuses exactly what parsing into a `Value` does.
    #[test]
    fn agrees_with_parsing_into_a_value() {
        let deep_array = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let deep_object = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
        let nested_ok = format!("{}1{}", "{\"a\":".repeat(100), "}".repeat(100));
        let texts = [
            "{}",
            "[]",
            "null",
            "true",
            " 1 ",
            "-0.0",
            "1e300",
            "1e400",
            "98765432109876543210987654321",
            r#""plain""#,
            r#""esc\"aped \u00e9 \ud83d\ude00""#,
            r#""\ud800""#,
            r#"{"\ud800":1}"#,
            r#"{"a\u0000b":[1,{"c":null}]}"#,
            r#"{"a":1,"a":2}"#,
            "{nope",
            "1 2",
            "[1,]",
            "{\"a\" 1}",
            "\"\u{7f}\"",
            "\"tab\there\"",
            "",
            "nul",
            &deep_array,
            &deep_object,
            &nested_ok,
        ];
        for text in texts {
            let as_value = serde_json::from_str::<serde_json::Value>(text).is_ok();
            assert_eq!(check(text.as_bytes()).is_ok(), as_value, "{text:.40}");
        }
        assert!(check(&[b'"', 0xff, b'"']).is_err(), "not UTF-8");
    }

    /// With serde_json's `raw_value` feature (on in this workspace), an
    /// object whose first key is `$serde_json::private::RawValue` is read by
    /// `Value` as a raw value: its member must be a string holding JSON, and
    /// nothing may follow it. `check` walks it as a plain object.
    #[test]
    fn agrees_with_value_on_the_raw_value_token_key() {
        let texts = [
            r#"{"$serde_json::private::RawValue":1}"#,
            r#"{"$serde_json::private::RawValue":"not json"}"#,
            r#"{"$serde_json::private::RawValue":"\"\\ud800\""}"#,
            r#"{"$serde_json::private::RawValue":"1","b":2}"#,
            r#"[{"$serde_json::private::RawValue":{}}]"#,
            r#"{"\u0024serde_json::private::RawValue":[]}"#,
            r#"{"$serde_json::private::RawValue":"[1,{\"a\":null}]"}"#,
            r#"{"\u0024serde_json::private::RawValue":"2"}"#,
            r#"[{"$serde_json::private::RawValue":"{}"},{"b":{"$serde_json::private::RawValue":"3"}}]"#,
            r#"{"a":1,"$serde_json::private::RawValue":"not json"}"#,
        ];
        let mut disagreements = Vec::new();
        for text in texts {
            let as_value = serde_json::from_str::<serde_json::Value>(text).map(drop);
            if check(text.as_bytes()).is_ok() != as_value.is_ok() {
                disagreements.push(format!("{text}: check ok, Value says {as_value:?}"));
            }
        }
        assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
        for text in [texts[0], texts[3]] {
            let refused = check(text.as_bytes()).expect_err(text).to_string();
            assert!(refused.contains("is reserved"), "{text}: {refused}");
        }
    }
}
