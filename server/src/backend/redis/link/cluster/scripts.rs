//! Lua scripts on a Redis Cluster without `SCRIPT LOAD` fan-outs.
//!
//! The `redis` crate answers a `NOSCRIPT` by sending `SCRIPT LOAD` to every
//! node and trying `EVALSHA` again. On a cluster that fan-out is not to be
//! trusted: the crate (1.8.1) silently skips a node whose connection is
//! still being made, so the retry can meet `NOSCRIPT` again, and it fails
//! as a whole when any one node does not answer, so a master that hangs
//! makes writes to the healthy masters fail. Instead the link remembers
//! the body the crate asks it to load, and a node that answers `NOSCRIPT`
//! gets the call again as `EVAL` with the body: routed by the same key to
//! the same node, which caches the script for the next `EVALSHA`.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use redis::{Arg, Cmd, ErrorKind, RedisResult, ServerErrorKind, Value};

/// Script bodies by SHA1 (lower-case hex, as Redis writes it).
#[derive(Debug, Default)]
pub struct ScriptBodies {
    by_sha: RwLock<HashMap<String, Arc<[u8]>>>,
}

impl ScriptBodies {
    /// When `cmd` is `SCRIPT LOAD <body>`: remembers the body and returns
    /// the SHA1 Redis would answer; `None` for any other command.
    pub fn remember(&self, cmd: &Cmd) -> Option<String> {
        let mut args = simple_args(cmd);
        let (name, sub, body) = (args.next()?, args.next()?, args.next()?);
        if !name.eq_ignore_ascii_case(b"SCRIPT")
            || !sub.eq_ignore_ascii_case(b"LOAD")
            || args.next().is_some()
        {
            return None;
        }
        let sha = redis::Script::new(std::str::from_utf8(body).ok()?)
            .get_hash()
            .to_owned();
        self.by_sha
            .write()
            .entry(sha.clone())
            .or_insert_with(|| body.into());
        Some(sha)
    }

    /// When `cmd` is `EVALSHA` of a remembered script: the same call as
    /// `EVAL` with the script's body.
    pub fn as_eval(&self, cmd: &Cmd) -> Option<Cmd> {
        let mut args = simple_args(cmd);
        let (name, sha) = (args.next()?, args.next()?);
        if !name.eq_ignore_ascii_case(b"EVALSHA") {
            return None;
        }
        let body = self
            .by_sha
            .read()
            .get(std::str::from_utf8(sha).ok()?)?
            .clone();
        let mut eval = redis::cmd("EVAL");
        eval.arg(&*body);
        for arg in args {
            eval.arg(arg);
        }
        Some(eval)
    }
}

/// Whether Redis answered that it does not hold the script (an answer
/// the connection passes on as a value, turned into an error only when
/// the caller reads it).
pub fn is_no_script(result: &RedisResult<Value>) -> bool {
    match result {
        Ok(Value::ServerError(err)) => err.kind() == Some(ServerErrorKind::NoScript),
        Err(err) => err.kind() == ErrorKind::Server(ServerErrorKind::NoScript),
        Ok(_) => false,
    }
}

/// `cmd`'s arguments (a cursor argument, which sessiond never sends, ends
/// them).
fn simple_args(cmd: &Cmd) -> impl Iterator<Item = &[u8]> {
    cmd.args_iter().map_while(|arg| match arg {
        Arg::Simple(bytes) => Some(bytes),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "return redis.call('GET', KEYS[1])";

    #[test]
    fn a_loaded_script_is_called_again_with_its_body() {
        let bodies = ScriptBodies::default();
        let script = redis::Script::new(BODY);
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha
            .arg(script.get_hash())
            .arg(1)
            .arg("sessiond:x")
            .arg(7);
        assert!(bodies.as_eval(&evalsha).is_none(), "nothing loaded yet");

        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(BODY);
        assert_eq!(bodies.remember(&load).as_deref(), Some(script.get_hash()));

        let eval = bodies.as_eval(&evalsha).expect("the body is known");
        let mut expected = redis::cmd("EVAL");
        expected.arg(BODY).arg(1).arg("sessiond:x").arg(7);
        assert_eq!(eval.get_packed_command(), expected.get_packed_command());
    }

    #[test]
    fn other_commands_are_left_alone() {
        let bodies = ScriptBodies::default();
        let mut get = redis::cmd("GET");
        get.arg("sessiond:x");
        assert!(bodies.remember(&get).is_none());
        assert!(bodies.as_eval(&get).is_none());
        let mut flush = redis::cmd("SCRIPT");
        flush.arg("FLUSH");
        assert!(bodies.remember(&flush).is_none());
        let answer =
            redis::parse_redis_value(b"-NOSCRIPT No matching script.\r\n").expect("a RESP error");
        assert!(matches!(answer, Value::ServerError(_)));
        assert!(is_no_script(&Ok(answer.clone())));
        assert!(is_no_script(&answer.extract_error()));
        let other = redis::parse_redis_value(b"-WRONGTYPE Operation\r\n").expect("a RESP error");
        assert!(!is_no_script(&Ok(other)));
        assert!(!is_no_script(&Ok(Value::Nil)));
    }
}
