//! RFC 7386 JSON merge patch on JSON text. Members the patch does not name
//! are copied as they were, byte for byte: numbers of any size or
//! precision, `-0`, string escapes, whitespace inside values, and the order
//! of members. Only the objects the patch reaches into are rewritten, and
//! the patch's own values are copied as sent. (Going through
//! `serde_json::Value` would round numbers to `f64` and sort keys.)

use std::borrow::Cow;

use indexmap::IndexMap;
use serde_json::value::RawValue;

use super::json_check;

/// Why a merge could not be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// The stored document is not JSON.
    #[error("{0}")]
    Target(String),
    /// The patch is not JSON that every later operation can parse.
    #[error("{0}")]
    Patch(String),
}

/// An object's members in document order, values as their JSON text.
type Members<'a> = IndexMap<String, Cow<'a, str>>;

/// `target` with `patch` merged into it, as JSON text.
pub fn merge_patch(target: &[u8], patch: &RawValue) -> Result<String, MergeError> {
    // The patch's raw text was only scanned; check it once for real so that
    // its nesting, escapes, numbers and reserved key are held to the same
    // rules (and told with the same messages) as stored data.
    json_check::check(patch.get().as_bytes()).map_err(|err| MergeError::Patch(err.to_string()))?;
    let target = std::str::from_utf8(target).map_err(|err| MergeError::Target(err.to_string()))?;
    merge_value(Some(target), patch.get())
}

/// RFC 7386 `MergePatch(target, patch)` on text; `None` is an absent member.
fn merge_value(target: Option<&str>, patch: &str) -> Result<String, MergeError> {
    let Some(patch) = object(patch).map_err(MergeError::Patch)? else {
        return Ok(patch.to_owned());
    };
    let mut members = match target {
        Some(text) => object(text)
            .map_err(MergeError::Target)?
            .unwrap_or_default(),
        None => Members::new(),
    };
    for (key, value) in patch {
        if value == "null" {
            members.shift_remove(&key);
        } else {
            let merged = merge_value(members.get(&key).map(AsRef::as_ref), &value)?;
            members.insert(key, Cow::Owned(merged));
        }
    }
    let mut text = String::from("{");
    for (index, (key, value)) in members.iter().enumerate() {
        if index > 0 {
            text.push(',');
        }
        let key = serde_json::to_string(key).map_err(|err| MergeError::Patch(err.to_string()))?;
        text.push_str(&key);
        text.push(':');
        text.push_str(value);
    }
    text.push('}');
    Ok(text)
}

/// The members of `text` when it is a JSON object, `None` for any other
/// JSON value.
fn object(text: &str) -> Result<Option<Members<'_>>, String> {
    if !text.trim_start().starts_with('{') {
        return Ok(None);
    }
    let members: IndexMap<String, &RawValue> =
        serde_json::from_str(text).map_err(|err| err.to_string())?;
    Ok(Some(
        members
            .into_iter()
            .map(|(key, value)| (key, Cow::Borrowed(value.get())))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_led_by_the_reserved_key_is_told_so() {
        for patch in [
            r#"{"$serde_json::private::RawValue":"1","b":2}"#,
            r#"{"$serde_json::private::RawValue":"x"}"#,
        ] {
            let patch: Box<RawValue> = serde_json::from_str(patch).unwrap();
            let refused = merge_patch(b"{}", &patch).unwrap_err().to_string();
            assert!(refused.contains("is reserved"), "{patch}: {refused}");
        }
    }

    fn merged(target: &str, patch: &str) -> String {
        let patch: Box<RawValue> = serde_json::from_str(patch).unwrap();
        merge_patch(target.as_bytes(), &patch).unwrap()
    }

    #[test]
    fn untouched_members_keep_their_text_and_order() {
        let target = r#"{"z":12345678901234567890123,"a":-0,"m":0.10000000000000000555,"s":"\u00e9\/","arr":[1.0, 2e3]}"#;
        assert_eq!(
            merged(target, r#"{"x":1}"#),
            r#"{"z":12345678901234567890123,"a":-0,"m":0.10000000000000000555,"s":"\u00e9\/","arr":[1.0, 2e3],"x":1}"#
        );
    }

    #[test]
    fn follows_rfc_7386() {
        // The examples of RFC 7386, appendix A (key order: target's first).
        let cases = [
            (r#"{"a":"b"}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"b":"c"}"#, r#"{"a":"b","b":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"a":null}"#, r#"{}"#),
            (r#"{"a":"b","b":"c"}"#, r#"{"a":null}"#, r#"{"b":"c"}"#),
            (r#"{"a":["b"]}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (r#"{"a":"c"}"#, r#"{"a":["b"]}"#, r#"{"a":["b"]}"#),
            (
                r#"{"a":{"b":"c"}}"#,
                r#"{"a":{"b":"d","c":null}}"#,
                r#"{"a":{"b":"d"}}"#,
            ),
            (r#"{"a":[{"b":"c"}]}"#, r#"{"a":[1]}"#, r#"{"a":[1]}"#),
            (r#"["a","b"]"#, r#"["c","d"]"#, r#"["c","d"]"#),
            (r#"{"a":"b"}"#, r#"["c"]"#, r#"["c"]"#),
            (r#"{"a":"foo"}"#, "null", "null"),
            (r#"{"a":"foo"}"#, r#""bar""#, r#""bar""#),
            (r#"{"e":null}"#, r#"{"a":1}"#, r#"{"e":null,"a":1}"#),
            (r#"[1,2]"#, r#"{"a":"b","c":null}"#, r#"{"a":"b"}"#),
            (
                r#"{}"#,
                r#"{"a":{"bb":{"ccc":null}}}"#,
                r#"{"a":{"bb":{}}}"#,
            ),
        ];
        for (target, patch, expected) in cases {
            assert_eq!(merged(target, patch), expected, "{target} + {patch}");
        }
    }

    #[test]
    fn nested_merges_keep_untouched_members_and_patch_values_verbatim() {
        assert_eq!(
            merged(
                r#"{"n":{"big":1e300,"keep":[-0.0]},"o":1}"#,
                r#"{"n":{"new":98765432109876543210987654321}}"#
            ),
            r#"{"n":{"big":1e300,"keep":[-0.0],"new":98765432109876543210987654321},"o":1}"#
        );
    }

    #[test]
    fn bad_patches_are_refused() {
        let deep: Box<RawValue> =
            serde_json::from_str(&format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200)))
                .unwrap();
        assert!(matches!(
            merge_patch(b"{}", &deep),
            Err(MergeError::Patch(_))
        ));
        let surrogate: Box<RawValue> = serde_json::from_str(r#"{"a":"\ud800"}"#).unwrap();
        assert!(matches!(
            merge_patch(b"{}", &surrogate),
            Err(MergeError::Patch(_))
        ));
    }
}
