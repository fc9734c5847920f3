//! Property tests of the binary protocol: every message survives an encode
//! and decode round trip, and the decoder never panics on arbitrary,
//! truncated or oversized input.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use sessiond_proto::codec::{self, CodecError, FrameCodec};
use sessiond_proto::wire::*;
use sessiond_proto::{ErrorCode, Event, EventKind, EventPage, SessionId};
use tokio_util::codec::{Decoder, Encoder};

fn session_id() -> impl Strategy<Value = SessionId> {
    any::<u128>().prop_map(SessionId::from_u128)
}

fn data() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..256).prop_map(Bytes::from)
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::InvalidJson),
        Just(ErrorCode::InvalidId),
        Just(ErrorCode::NotFound),
        Just(ErrorCode::VersionMismatch),
        Just(ErrorCode::PayloadTooLarge),
        Just(ErrorCode::StoreFull),
        Just(ErrorCode::Unavailable),
        Just(ErrorCode::ProtocolError),
        Just(ErrorCode::Internal),
        Just(ErrorCode::Indeterminate),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let ttl = proptest::option::of(any::<u64>());
    let version = proptest::option::of(any::<u64>());
    prop_oneof![
        (data(), ttl.clone(), proptest::option::of(user())).prop_map(|(data, ttl_secs, user)| {
            Op::Create {
                data,
                ttl_secs,
                user,
            }
        }),
        session_id().prop_map(|id| Op::Get { id }),
        (session_id(), data(), ttl.clone(), version.clone()).prop_map(
            |(id, data, ttl_secs, expected_version)| Op::Put {
                id,
                data,
                ttl_secs,
                expected_version
            }
        ),
        (session_id(), data(), ttl.clone(), version).prop_map(
            |(id, patch, ttl_secs, expected_version)| Op::Patch {
                id,
                patch,
                ttl_secs,
                expected_version
            }
        ),
        session_id().prop_map(|id| Op::Delete { id }),
        (session_id(), ttl).prop_map(|(id, ttl_secs)| Op::Touch { id, ttl_secs }),
        (session_id(), proptest::option::of(user())).prop_map(|(id, user)| Op::Rotate { id, user }),
        user().prop_map(|user| Op::ListUser { user }),
        (
            proptest::option::of("[0-9-]{1,20}"),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(after, limit, wait_ms)| Op::Events {
                after,
                limit,
                wait_ms
            }),
        (user(), proptest::option::of(session_id()))
            .prop_map(|(user, except)| Op::RevokeUser { user, except }),
        Just(Op::Ping),
        Just(Op::Stats),
    ]
}

fn write_tag() -> impl Strategy<Value = WriteTag> {
    (
        any::<u64>(),
        proptest::option::of(any::<u64>()),
        any::<u64>(),
    )
        .prop_map(|(id, resent_after_ms, sent_at_ms)| WriteTag {
            id,
            resent_after_ms,
            sent_at_ms,
        })
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    let placement = (proptest::collection::vec(any::<u64>(), 1..8), any::<u32>())
        .prop_map(|(ring, owner)| Placement { ring, owner });
    prop_oneof![
        (
            any::<u32>(),
            proptest::option::of(".{0,40}"),
            proptest::option::of(placement)
        )
            .prop_map(
                |(protocol, auth_token, placement)| ClientFrame::Hello(Hello {
                    protocol,
                    auth_token,
                    placement
                })
            ),
        (any::<u64>(), op(), proptest::option::of(write_tag()))
            .prop_map(|(id, op, write)| ClientFrame::Request(Request { id, op, write })),
    ]
}

fn wire_error() -> impl Strategy<Value = WireError> {
    (
        error_code(),
        ".{0,60}",
        proptest::option::of(any::<u64>()),
        proptest::option::of("[0-9]{1,13}-[0-9]{1,3}"),
    )
        .prop_map(|(code, message, current_version, oldest)| WireError {
            code,
            message,
            current_version,
            oldest,
        })
}

fn event() -> impl Strategy<Value = Event> {
    (
        "[0-9]{1,13}-[0-9]{1,3}",
        session_id(),
        proptest::option::of(user()),
        any::<u64>(),
        proptest::option::of(session_id()),
    )
        .prop_map(|(cursor, id, user, at_ms, old_id)| Event {
            cursor,
            kind: if old_id.is_some() {
                EventKind::Rotated
            } else {
                EventKind::Expired
            },
            id,
            user,
            at_ms,
            old_id,
        })
}

fn user() -> impl Strategy<Value = String> {
    ".{1,40}"
}

fn session_record() -> impl Strategy<Value = SessionRecord> {
    (
        session_id(),
        any::<u64>(),
        data(),
        any::<[u64; 4]>(),
        proptest::option::of(user()),
    )
        .prop_map(|(id, version, data, [a, b, c, d], user)| SessionRecord {
            id,
            version,
            data,
            created_at_ms: a,
            updated_at_ms: b,
            expires_at_ms: c,
            ttl_secs: d,
            user,
        })
}

fn outcome() -> impl Strategy<Value = Outcome> {
    let stats = any::<[u64; 8]>().prop_map(|[a, b, c, d, e, f, g, h]| {
        Outcome::Stats(NodeStats {
            sessions: a,
            bytes_used: b,
            bytes_limit: Some(c),
            expirations: d,
            evictions: e,
            rejections: f,
            user_index_users: g,
            user_index_entries: h,
        })
    });
    prop_oneof![
        session_record().prop_map(Outcome::Session),
        proptest::collection::vec(session_record(), 0..4).prop_map(Outcome::UserSessions),
        any::<u64>().prop_map(Outcome::Revoked),
        (proptest::collection::vec(event(), 0..4), "[0-9]{1,5}")
            .prop_map(|(events, next)| Outcome::Events(EventPage { events, next })),
        Just(Outcome::Deleted),
        Just(Outcome::Pong),
        stats,
        wire_error().prop_map(Outcome::Error),
    ]
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (
            any::<u32>(),
            ".{0,20}",
            any::<u64>(),
            any::<bool>(),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(|fields| ServerFrame::Welcome(Welcome {
                protocol: fields.0,
                server_version: fields.1,
                max_frame_bytes: fields.2,
                shared_sessions: fields.3,
                max_ttl_secs: fields.4,
                write_behind: fields.5,
            })),
        (any::<u64>(), outcome())
            .prop_map(|(id, outcome)| ServerFrame::Response(Response { id, outcome })),
        wire_error().prop_map(ServerFrame::Fatal),
    ]
}

/// Decodes every frame in `bytes` with a fresh codec, as a server would.
fn decode_all(bytes: &[u8], max: usize) -> Vec<Result<ClientFrame, String>> {
    let mut codec = FrameCodec::<ClientFrame, ServerFrame>::new(max);
    let mut buffer = BytesMut::from(bytes);
    let mut frames = Vec::new();
    loop {
        match codec.decode(&mut buffer) {
            Ok(Some(frame)) => frames.push(Ok(frame)),
            Ok(None) => break,
            Err(err) => {
                frames.push(Err(err.to_string()));
                break;
            }
        }
    }
    frames
}

proptest! {
    #[test]
    fn client_frames_round_trip(frame in client_frame()) {
        let bytes = codec::encode(&frame).unwrap();
        prop_assert_eq!(codec::decode::<ClientFrame>(&bytes).unwrap(), frame);
    }

    #[test]
    fn server_frames_round_trip(frame in server_frame()) {
        let bytes = codec::encode(&frame).unwrap();
        prop_assert_eq!(codec::decode::<ServerFrame>(&bytes).unwrap(), frame);
    }

    #[test]
    fn the_head_of_a_frame_names_the_request_it_answers(frame in server_frame()) {
        let mut bytes = codec::encode(&frame).unwrap();
        // An oversized frame is read no further than its head.
        bytes.resize(bytes.len().max(codec::RESPONSE_HEAD_BYTES), 0);
        let answered = codec::answered_request(&bytes[..codec::RESPONSE_HEAD_BYTES]);
        match frame {
            ServerFrame::Response(response) => prop_assert_eq!(answered, Some(response.id)),
            _ => prop_assert_eq!(answered, None),
        }
    }

    #[test]
    fn framed_round_trip_through_the_codec(frames in proptest::collection::vec(client_frame(), 1..8)) {
        let mut encoder = FrameCodec::<ServerFrame, ClientFrame>::new(1 << 20);
        let mut wire = BytesMut::new();
        for frame in &frames {
            encoder.encode(frame.clone(), &mut wire).unwrap();
        }
        let decoded: Vec<ClientFrame> = decode_all(&wire, 1 << 20)
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn frames_split_over_many_reads_are_reassembled(
        frames in proptest::collection::vec(client_frame(), 1..6),
        chunk in 1usize..40,
    ) {
        let mut encoder = FrameCodec::<ServerFrame, ClientFrame>::new(1 << 20);
        let mut wire = BytesMut::new();
        for frame in &frames {
            encoder.encode(frame.clone(), &mut wire).unwrap();
        }
        let mut decoder = FrameCodec::<ClientFrame, ServerFrame>::new(1 << 20);
        let mut buffer = BytesMut::new();
        let mut decoded = Vec::new();
        for piece in wire.chunks(chunk) {
            buffer.extend_from_slice(piece);
            while let Some(frame) = decoder.decode(&mut buffer).unwrap() {
                decoded.push(frame);
            }
        }
        prop_assert_eq!(decoded, frames);
        prop_assert!(buffer.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_all(&bytes, 4096);
        let _ = codec::decode::<ClientFrame>(&bytes);
        let _ = codec::decode::<ServerFrame>(&bytes);
    }

    #[test]
    fn every_truncation_of_a_valid_frame_is_incomplete_not_an_error(frame in client_frame(), cut in any::<prop::sample::Index>()) {
        let mut encoder = FrameCodec::<ServerFrame, ClientFrame>::new(1 << 20);
        let mut wire = BytesMut::new();
        encoder.encode(frame, &mut wire).unwrap();
        let cut = cut.index(wire.len());
        prop_assert!(decode_all(&wire[..cut], 1 << 20).is_empty());
    }

    #[test]
    fn truncated_payloads_are_malformed(frame in client_frame(), cut in any::<prop::sample::Index>()) {
        let bytes = codec::encode(&frame).unwrap();
        let cut = cut.index(bytes.len());
        prop_assert!(codec::decode::<ClientFrame>(&bytes[..cut]).is_err());
    }
}

#[test]
fn an_oversized_length_prefix_is_rejected_before_reading_the_body() {
    let mut codec = FrameCodec::<ClientFrame, ServerFrame>::new(1024);
    let mut buffer = BytesMut::new();
    buffer.put_u32(u32::MAX);
    buffer.put_slice(b"only a few bytes follow");
    match codec.decode(&mut buffer) {
        Err(CodecError::TooLarge { announced, max }) => {
            assert_eq!(announced, u32::MAX as usize);
            assert_eq!(max, 1024);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(
        buffer.capacity() < 4096,
        "the decoder reserved room for the announced frame"
    );
}

#[test]
fn a_huge_inner_length_does_not_allocate_it() {
    // A Create whose data claims 2^62 bytes, in a frame of a few bytes.
    let mut payload = codec::encode(&ClientFrame::Request(Request {
        id: 1,
        op: Op::Create {
            data: Bytes::new(),
            ttl_secs: None,
            user: None,
        },
        write: None,
    }))
    .unwrap();
    // The empty data's length (varint 0) sits right before the None tags of
    // the ttl, the user and the write tag.
    let len_at = payload.len() - 4;
    assert_eq!(payload[len_at], 0);
    payload.splice(len_at..=len_at, [0xff, 0, 0, 0, 0, 0, 0, 0, 0x40]);
    assert!(matches!(
        codec::decode::<ClientFrame>(&payload),
        Err(CodecError::Malformed(_))
    ));
}

#[test]
fn trailing_bytes_after_a_message_are_malformed() {
    let mut bytes = codec::encode(&ClientFrame::Request(Request {
        id: 7,
        op: Op::Ping,
        write: None,
    }))
    .unwrap();
    bytes.push(0);
    assert!(matches!(
        codec::decode::<ClientFrame>(&bytes),
        Err(CodecError::Malformed(_))
    ));
}
