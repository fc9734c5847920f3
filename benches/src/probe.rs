//! What the load tool reads at both ends of the measured window besides
//! its own counts: the CPU time of the server processes (utime + stime
//! from `/proc`, and the stime part: time in the kernel) and of itself, and how many requests the server answered
//! per socket read (Redis's `INFO stats`, a sessiond node's `/metrics`),
//! which is how deep the requests were pipelined.

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where the server's request and read counters are.
#[derive(Clone)]
pub enum Counters {
    /// `INFO stats` of this Redis (`total_commands_processed`,
    /// `total_reads_processed`).
    Redis(redis::aio::MultiplexedConnection),
    /// The `/metrics` page of a sessiond node's HTTP address
    /// (`sessiond_tcp_requests_total`, `sessiond_tcp_reads_total`).
    Sessiond(String),
}

/// What to read at both ends of the window.
#[derive(Clone)]
pub struct Probe {
    /// Server processes whose CPU time is counted.
    pub server_pids: Vec<u32>,
    /// The server's counters, if known.
    pub counters: Option<Counters>,
}

/// One reading.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// CPU time of the server processes.
    pub server_cpu: Duration,
    /// The part of `server_cpu` spent in the kernel (stime).
    pub server_system: Duration,
    /// CPU time of this process.
    pub own_cpu: Duration,
    /// Requests the server answered and socket reads it made, if known.
    pub requests_reads: Option<(u64, u64)>,
}

/// What the window cost, from two readings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// CPU time of the server processes in the window (zero without pids).
    pub server_cpu: Duration,
    /// The part of `server_cpu` spent in the kernel.
    pub server_system: Duration,
    /// CPU time of the load tool in the window.
    pub loader_cpu: Duration,
    /// Requests answered per socket read in the window, if known.
    pub requests_per_read: Option<f64>,
}

impl Sample {
    /// The cost of the window from `self` to `end`.
    pub fn until(&self, end: &Sample) -> Usage {
        let requests_per_read = match (self.requests_reads, end.requests_reads) {
            (Some((requests, reads)), Some((requests_end, reads_end))) if reads_end > reads => {
                Some((requests_end - requests) as f64 / (reads_end - reads) as f64)
            }
            _ => None,
        };
        Usage {
            server_cpu: end.server_cpu.saturating_sub(self.server_cpu),
            server_system: end.server_system.saturating_sub(self.server_system),
            loader_cpu: end.own_cpu.saturating_sub(self.own_cpu),
            requests_per_read,
        }
    }
}

impl Probe {
    /// Reads everything now.
    pub async fn sample(&self) -> anyhow::Result<Sample> {
        let mut server_cpu = Duration::ZERO;
        let mut server_system = Duration::ZERO;
        for pid in &self.server_pids {
            let time = cpu_time(&pid.to_string())?;
            server_cpu += time.total();
            server_system += time.system;
        }
        let requests_reads = match &self.counters {
            Some(counters) => Some(counters.read().await?),
            None => None,
        };
        Ok(Sample {
            server_cpu,
            server_system,
            own_cpu: cpu_time("self")?.total(),
            requests_reads,
        })
    }
}

/// The CPU time of a process, split as `/proc` reports it.
#[derive(Debug, Clone, Copy)]
struct CpuTime {
    /// utime: in the process's own code.
    user: Duration,
    /// stime: in the kernel on the process's behalf.
    system: Duration,
}

impl CpuTime {
    fn total(&self) -> Duration {
        self.user + self.system
    }
}

/// utime and stime of `/proc/<pid>` (all its threads).
fn cpu_time(pid: &str) -> anyhow::Result<CpuTime> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The fields after the command name, which is in parentheses and may
    // hold spaces: state is field 3, utime and stime are fields 14 and 15.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index)
            .and_then(|field| field.parse().ok())
            .with_context(|| format!("unexpected {path}"))
    };
    let per_second = rustix::param::clock_ticks_per_second() as f64;
    let seconds = |ticks: u64| Duration::from_secs_f64(ticks as f64 / per_second);
    Ok(CpuTime {
        user: seconds(ticks(11)?),
        system: seconds(ticks(12)?),
    })
}

impl Counters {
    /// (requests answered, socket reads) so far.
    async fn read(&self) -> anyhow::Result<(u64, u64)> {
        match self {
            Self::Redis(conn) => {
                let info: String = redis::cmd("INFO")
                    .arg("stats")
                    .query_async(&mut conn.clone())
                    .await?;
                Ok((
                    field(&info, "total_commands_processed:"),
                    field(&info, "total_reads_processed:"),
                ))
            }
            Self::Sessiond(address) => {
                let mut stream = tokio::net::TcpStream::connect(address)
                    .await
                    .with_context(|| format!("cannot reach {address} for /metrics"))?;
                stream
                    .write_all(b"GET /metrics HTTP/1.0\r\nConnection: close\r\n\r\n")
                    .await?;
                let mut page = String::new();
                stream.read_to_string(&mut page).await?;
                Ok((
                    field(&page, "sessiond_tcp_requests_total"),
                    field(&page, "sessiond_tcp_reads_total"),
                ))
            }
        }
    }
}

/// The sum of the values on the lines of `text` that start with `name`
/// (every label set of a Prometheus metric, or one `INFO` field).
fn field(text: &str, name: &str) -> u64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(name))
        .filter_map(|rest| {
            let value = rest.rsplit([' ', ':']).next()?;
            value.trim().parse::<f64>().ok()
        })
        .sum::<f64>() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_sum_every_label_set() {
        let page = "# TYPE sessiond_tcp_requests_total counter\n\
            sessiond_tcp_requests_total{op=\"get\",outcome=\"ok\"} 90\n\
            sessiond_tcp_requests_total{op=\"put\",outcome=\"ok\"} 10\n\
            sessiond_tcp_reads_total 25\n";
        assert_eq!(field(page, "sessiond_tcp_requests_total"), 100);
        assert_eq!(field(page, "sessiond_tcp_reads_total"), 25);
        let info = "# Stats\r\ntotal_commands_processed:1234\r\ntotal_reads_processed:600\r\n";
        assert_eq!(field(info, "total_commands_processed:"), 1234);
        assert_eq!(field(info, "total_reads_processed:"), 600);
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        assert!(cpu_time("self").is_ok());
    }
}
