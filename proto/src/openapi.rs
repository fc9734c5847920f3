//! OpenAPI schemas of the values the server checks by hand: session ids and
//! user names (only with the `openapi` feature). Fields and parameters that
//! carry one point at these with `value_type`.

use std::borrow::Cow;

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::id::ID_TEXT_LEN;
use crate::user::MAX_USER_BYTES;
use crate::{SessionId, UserName};

/// 22 characters of canonical base64url: the last one carries only the
/// 128th and 127th bits, so it is one of `A`, `Q`, `g`, `w`.
pub const ID_PATTERN: &str = "^[A-Za-z0-9_-]{21}[AQgw]$";

/// No control characters (Unicode category Cc, what `char::is_control`
/// finds).
pub const USER_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$";

impl PartialSchema for SessionId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "A session id: 128 random bits as 22 characters of base64url without padding.",
            ))
            .min_length(Some(ID_TEXT_LEN))
            .max_length(Some(ID_TEXT_LEN))
            .pattern(Some(ID_PATTERN))
            .examples(["pB0x4b2ygQn7a8lrt5m1Xw"])
            .into()
    }
}

impl ToSchema for SessionId {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("SessionId")
    }
}

impl PartialSchema for UserName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            // JSON Schema has no byte length, and a pattern bounding the
            // bytes of UTF-8 would be a regex of hundreds of states: the
            // character count bounds it (256 bytes are at most 256
            // characters) and the description says the rest.
            .description(Some(
                "Who a session belongs to: 1 to 256 bytes of UTF-8 without control characters. \
                 The limit is in bytes, which `maxLength` (a count of characters) only bounds: \
                 a name of 256 characters or fewer is still refused (400 `invalid_user`) when \
                 it is over 256 bytes, as 86 times `€` (3 bytes each) is.",
            ))
            .min_length(Some(1))
            .max_length(Some(MAX_USER_BYTES))
            .pattern(Some(USER_PATTERN))
            .examples(["alice@example.com"])
            .into()
    }
}

impl ToSchema for UserName {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("UserName")
    }
}
