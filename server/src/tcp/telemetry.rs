//! The binary protocol's metrics, registered once: recording through a
//! handle held from the start skips the registry lookup (hashing the name
//! and labels) that every `metrics::counter!` call makes.

use std::time::Duration;

use metrics::{Counter, Histogram};
use sessiond_proto::wire::{Op, Outcome};

/// One operation's handles.
#[derive(Debug)]
struct OpMetrics {
    name: &'static str,
    duration: Histogram,
    ok: Counter,
}

/// Handles of every binary-protocol metric recorded per request or per
/// socket call.
#[derive(Debug)]
pub struct TcpMetrics {
    ops: Vec<OpMetrics>,
    /// Socket reads that brought requests (`sessiond_tcp_reads_total`).
    pub reads: Counter,
    /// Socket writes of answers (`sessiond_tcp_writes_total`).
    pub writes: Counter,
}

impl TcpMetrics {
    /// Registers every handle with the installed recorder.
    pub fn register() -> Self {
        // Every operation's handles, up front; an operation missing here
        // would be recorded through the registry, as any error outcome is.
        let ops = Op::NAMES
            .iter()
            .map(|&name| OpMetrics {
                name,
                duration: metrics::histogram!("sessiond_tcp_request_duration_seconds", "op" => name),
                ok: metrics::counter!("sessiond_tcp_requests_total", "op" => name, "outcome" => "ok"),
            })
            .collect();
        Self {
            ops,
            reads: metrics::counter!("sessiond_tcp_reads_total"),
            writes: metrics::counter!("sessiond_tcp_writes_total"),
        }
    }

    /// Records a request for `op` that took `elapsed` and ended in `outcome`.
    pub fn request(&self, op: &'static str, outcome: &Outcome, elapsed: Duration) {
        let handles = self.ops.iter().find(|handles| handles.name == op);
        let seconds = elapsed.as_secs_f64();
        match handles {
            Some(handles) => handles.duration.record(seconds),
            None => metrics::histogram!("sessiond_tcp_request_duration_seconds", "op" => op)
                .record(seconds),
        }
        match (outcome, handles) {
            (Outcome::Error(error), _) => metrics::counter!(
                "sessiond_tcp_requests_total",
                "op" => op,
                "outcome" => error.code.as_str()
            )
            .increment(1),
            (_, Some(handles)) => handles.ok.increment(1),
            (_, None) => {
                metrics::counter!("sessiond_tcp_requests_total", "op" => op, "outcome" => "ok")
                    .increment(1);
            }
        }
    }
}
