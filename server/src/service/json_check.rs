//! Checks JSON text the way building a `serde_json::Value` would, without
//! building it: the same parser, the same nesting limit, every string
//! (keys too) decoded and so checked for lone surrogate escapes, every
//! number checked to be in range; nothing is allocated for what is read.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

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
        while members.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
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
}
