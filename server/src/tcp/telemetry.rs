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
    /// Per operation, in [`Op::NAMES`] order.
    ops: Vec<OpMetrics>,
    /// Socket reads that brought requests (`sessiond_tcp_reads_total`).
    pub reads: Counter,
    /// Socket writes of answers (`sessiond_tcp_writes_total`).
    pub writes: Counter,
}

impl TcpMetrics {
    /// Registers every handle with the installed recorder.
    pub fn register() -> Self {
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

    /// Records a request for the operation at `op_index` (its
    /// [`Op::index`]) that took `elapsed` and ended in `outcome`; an error
    /// outcome goes through the registry (its code is a label).
    pub fn request(&self, op_index: usize, outcome: &Outcome, elapsed: Duration) {
        let handles = &self.ops[op_index];
        handles.duration.record(elapsed.as_secs_f64());
        match outcome {
            Outcome::Error(error) => metrics::counter!(
                "sessiond_tcp_requests_total",
                "op" => handles.name,
                "outcome" => error.code.as_str()
            )
            .increment(1),
            _ => handles.ok.increment(1),
        }
    }
}
