//! A Lua script call built as one `EVALSHA` command: its keys and
//! arguments are written straight into the command's buffer. Every script
//! is called this way. The `redis` crate's `ScriptInvocation` allocates
//! each key and argument on its own and copies them into the command when
//! it is sent, and a 1 KiB allocation after them makes glibc consolidate
//! the small chunks they leave: a sync write made 28.5 allocations with
//! it, 15.0 with this (BENCHMARKS.md).

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind, ToRedisArgs};

/// `EVALSHA`, the script's SHA1 and the count of keys.
const HEAD_ARGS: usize = 3;
/// Room for the arguments a call is expected to add, in the command's
/// index of arguments.
const EXPECTED_ARGS: usize = 16;

/// One call of a script, ready to send.
pub struct ScriptCall<'a> {
    script: &'a Script,
    cmd: Cmd,
}

impl<'a> ScriptCall<'a> {
    /// A call of `script` on `keys`, with room for `arg_bytes` bytes of
    /// arguments (more grows the buffer).
    pub fn new<'k, K>(script: &'a Script, keys: K, arg_bytes: usize) -> Self
    where
        K: IntoIterator<Item = &'k str>,
        K::IntoIter: Clone,
    {
        let keys = keys.into_iter();
        let (count, key_bytes) = keys
            .clone()
            .fold((0, 0), |(count, bytes), key| (count + 1, bytes + key.len()));
        let head_bytes = "EVALSHA".len() + script.get_hash().len() + 4;
        let mut cmd = Cmd::with_capacity(
            HEAD_ARGS + count + EXPECTED_ARGS,
            head_bytes + key_bytes + arg_bytes,
        );
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(count);
        for key in keys {
            cmd.arg(key);
        }
        Self { script, cmd }
    }

    /// Adds an argument (`ARGV[i]` in the script).
    pub fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    /// Sends the call; when Redis does not know the script (`NOSCRIPT`),
    /// loads it and sends the call again.
    pub async fn invoke_async<T: FromRedisValue>(
        &self,
        conn: &mut impl ConnectionLike,
    ) -> RedisResult<T> {
        match self.cmd.query_async(conn).await {
            Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.script.prepare_invoke().load_async(conn).await?;
                self.cmd.query_async(conn).await
            }
            result => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_call_is_the_evalsha_command_the_crate_would_send() {
        let script = Script::new("return {KEYS[1], ARGV[1]}");
        let mut call = ScriptCall::new(&script, ["k1", "k2"], 16);
        call.arg("a").arg(7_u64).arg(&b"bytes"[..]);
        let mut expected = redis::cmd("EVALSHA");
        expected
            .arg(script.get_hash())
            .arg(2)
            .arg("k1")
            .arg("k2")
            .arg("a")
            .arg(7_u64)
            .arg(&b"bytes"[..]);
        assert_eq!(call.cmd.get_packed_command(), expected.get_packed_command());
    }
}
