//! The command line: subcommands, flags and their environment variables.
//! The only place that reads the environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use sessiond_proto::wire::MAX_FRAME_BYTES_CAP;

use crate::backend::redis::{
    Consistency, RedisConfig, RedisTarget, ReplicationMode, prefix_keeps_tombstones_in_slot,
};
use crate::balance::{
    BalanceConfig, BodyLimits, HeadLimits, ProxyVersion, SourcesError, TlsFiles, UpstreamSources,
    UpstreamUrl, UpstreamUrlError,
};
use crate::http::{HttpLimits, MAX_HEAD_BYTES, MIN_HEAD_BYTES};
use crate::node::NodeConfig;
use crate::secret::Secret;
use crate::service::ServiceConfig;
use crate::store::{EventLogConfig, StoreConfig, UserLimit, WhenFull, WhenUserFull, charge_of};
use crate::tcp::TcpLimits;

/// Most events a log may keep: ten million, some gigabytes of memory (the
/// log is outside `--max-memory`).
const MAX_EVENTS_RETENTION: usize = 10_000_000;

/// Room a binary frame needs beside a session's data: its id, user, tag
/// and metadata, with margin.
const FRAME_ENVELOPE_BYTES: usize = 64 << 10;

/// sessiond: a session store that lets web backends be stateless.
#[derive(Debug, Parser)]
#[command(name = "sessiond", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a session store node.
    Serve(ServeArgs),
    /// Run the round-robin front balancer in front of app servers.
    Balance(BalanceArgs),
    /// Inspect a store node over the binary protocol: get, delete, stats,
    /// list-user, revoke-user (token from SESSIOND_AUTH_TOKEN; exit 0 found,
    /// 1 not found, 2 error).
    Ctl(sessiond_ctl::CtlArgs),
}

/// The token `sessiond ctl` presents, from `SESSIOND_AUTH_TOKEN`.
pub fn ctl_token() -> Option<String> {
    std::env::var(sessiond_ctl::TOKEN_VARIABLE).ok()
}

/// A feature switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Toggle {
    /// On.
    On,
    /// Off.
    Off,
}

/// What a full store does with a write that does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WhenFullPolicy {
    /// Answer 507 and keep every existing session.
    Reject,
    /// Evict least recently used sessions until the write fits.
    EvictLru,
}

/// What creating or binding one more session does to a user at the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WhenUserFullPolicy {
    /// Remove the user's least recently used session in the same step.
    EvictOldest,
    /// Answer 409 `too_many_sessions` and change nothing.
    Reject,
}

/// When a replicated write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RedisModeArg {
    /// After Redis acknowledged it: nothing acknowledged is lost.
    Sync,
    /// From memory; writes still queued when the node is killed are lost.
    Async,
}

/// What reads may return with Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    /// The memory copy, kept coherent by invalidations.
    Cached,
    /// The version in Redis, checked on every read.
    Strong,
}

/// `sessiond serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the HTTP/JSON API (port 0 picks a free port).
    #[arg(long, env = "SESSIOND_HTTP", default_value = "127.0.0.1:7700")]
    pub http: SocketAddr,

    /// Address of the binary protocol (port 0 picks a free port).
    #[arg(long, env = "SESSIOND_TCP", default_value = "127.0.0.1:7701")]
    pub tcp: SocketAddr,

    /// Bearer token every /v1 request and every binary-protocol Hello must
    /// carry (health endpoints stay open).
    #[arg(long, env = "SESSIOND_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,

    /// Memory sessions may use in all: keys, data and per-entry overhead
    /// (human units: 512MiB, 2GiB).
    #[arg(long, env = "SESSIOND_MAX_MEMORY", default_value = "1GiB", value_parser = parse_bytes)]
    pub max_memory: u64,

    /// What to do when a write does not fit in --max-memory.
    #[arg(long, env = "SESSIOND_WHEN_FULL", value_enum, default_value_t = WhenFullPolicy::Reject)]
    pub when_full: WhenFullPolicy,

    /// Largest session data (JSON text) a client may store.
    #[arg(long, env = "SESSIOND_MAX_SESSION_BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub max_session_bytes: u64,

    /// Idle TTL of sessions created without one (30m, 1h, 90s).
    #[arg(long, env = "SESSIOND_DEFAULT_TTL", default_value = "30m", value_parser = parse_duration)]
    pub default_ttl: Duration,

    /// Largest idle TTL a client may ask for (1s to 100 years).
    #[arg(long, env = "SESSIOND_MAX_TTL", default_value = "24h", value_parser = parse_duration)]
    pub max_ttl: Duration,

    /// Most live sessions one user may have (0: no cap).
    #[arg(long, env = "SESSIOND_MAX_SESSIONS_PER_USER", default_value_t = 0)]
    pub max_sessions_per_user: usize,

    /// What a create or login past --max-sessions-per-user does.
    #[arg(long, env = "SESSIOND_WHEN_USER_FULL", value_enum, default_value_t = WhenUserFullPolicy::EvictOldest)]
    pub when_user_full: WhenUserFullPolicy,

    /// Absolute lifetime cap from creation, however often a session is used
    /// (unset: sessions live as long as they are used).
    #[arg(long, env = "SESSIOND_MAX_LIFETIME", value_parser = parse_duration)]
    pub max_lifetime: Option<Duration>,

    /// Number of independently locked shards of the keyspace (rounded up to
    /// a power of two).
    #[arg(long, env = "SESSIOND_SHARDS", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub shards: u16,

    /// How often the sweeper frees expired sessions.
    #[arg(long, env = "SESSIOND_SWEEP_INTERVAL", default_value = "100ms", value_parser = parse_duration)]
    pub sweep_interval: Duration,

    /// Sessions the sweeper examines per shard and pass (bounds its work).
    #[arg(long, env = "SESSIOND_SWEEP_BATCH", default_value_t = 256, value_parser = at_least_one)]
    pub sweep_batch: usize,

    /// Largest binary-protocol frame (default: --max-session-bytes + 64KiB).
    #[arg(long, env = "SESSIOND_MAX_FRAME_BYTES", value_parser = parse_bytes)]
    pub max_frame_bytes: Option<u64>,

    /// Binary-protocol connections served at once; more get an error frame.
    #[arg(long, env = "SESSIOND_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = at_least_one)]
    pub max_connections: usize,

    /// Requests one binary-protocol connection may have in flight; past it
    /// the server reads no more from that connection until it answers.
    #[arg(long, env = "SESSIOND_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = at_least_one)]
    pub max_in_flight: usize,

    /// A binary-protocol connection without requests for this long is closed.
    #[arg(long, env = "SESSIOND_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Longest wait at shutdown for open connections (HTTP and binary) to
    /// finish their requests; then they are closed and the write-behind
    /// queue is flushed.
    #[arg(long, env = "SESSIOND_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Time a new binary-protocol connection has to send its Hello.
    #[arg(long, env = "SESSIOND_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// HTTP connections served at once; past it a few more are accepted for
    /// /healthz, /readyz and /metrics only, and the rest are closed at once.
    #[arg(long, env = "SESSIOND_MAX_HTTP_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_http_connections: u32,

    /// Time an HTTP client has to send a whole request head: from the
    /// connection's start, or from the first byte of a kept-alive
    /// connection's next request.
    #[arg(long, env = "SESSIOND_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// Time an HTTP client has to send a whole request body once its head
    /// is in (then 408).
    #[arg(long, env = "SESSIOND_HTTP_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub http_body_timeout: Duration,

    /// A kept-alive HTTP connection without a new request for this long is
    /// closed.
    #[arg(long, env = "SESSIOND_HTTP_IDLE_TIMEOUT", default_value = "75s", value_parser = parse_duration)]
    pub http_idle_timeout: Duration,

    /// Largest HTTP request head (request line and headers); past it 431
    /// and the connection is closed.
    #[arg(long, env = "SESSIOND_HTTP_MAX_HEAD_BYTES", default_value = "64KiB", value_parser = parse_bytes)]
    pub http_max_head_bytes: u64,

    /// Replicate to this Redis server (`redis://[user:password@]host:port[/db]`):
    /// writes reach Redis, misses read through, nodes share sessions.
    #[arg(long, env = "SESSIOND_REDIS", conflicts_with = "redis_cluster")]
    pub redis: Option<String>,

    /// Replicate to this Redis Cluster, given by some of its nodes' URLs
    /// (comma separated).
    #[arg(long, env = "SESSIOND_REDIS_CLUSTER", value_delimiter = ',')]
    pub redis_cluster: Vec<String>,

    /// Redis Cluster commands a node keeps in flight at once (more wait in
    /// the node). The `redis` crate's cluster client can deadlock when a
    /// master dies under many concurrent commands (the node then replaces
    /// the connection within about 2 s); this bound makes that rare.
    #[arg(
        long,
        env = "SESSIOND_REDIS_CLUSTER_MAX_IN_FLIGHT",
        default_value_t = DEFAULT_CLUSTER_MAX_IN_FLIGHT,
        value_parser = clap::value_parser!(u32).range(1..=MAX_COUNT)
    )]
    pub redis_cluster_max_in_flight: u32,

    /// When a write is acknowledged: `sync` after Redis has it, `async`
    /// from memory with Redis following from a bounded queue.
    #[arg(long, env = "SESSIOND_REDIS_MODE", value_enum, default_value_t = RedisModeArg::Sync)]
    pub redis_mode: RedisModeArg,

    /// Prefix of every Redis key (and of the invalidation channel). With
    /// `--redis-cluster`, a `}` in it must close a hash tag (`{app}:`).
    #[arg(long, env = "SESSIOND_REDIS_PREFIX", default_value = DEFAULT_REDIS_PREFIX)]
    pub redis_prefix: String,

    /// What reads return with Redis: `cached` (memory, kept coherent by
    /// invalidations) or `strong` (checked against Redis on every read).
    #[arg(long, env = "SESSIOND_CONSISTENCY", value_enum, default_value_t = ConsistencyArg::Cached)]
    pub consistency: ConsistencyArg,

    /// The durable log of session lifecycle events (`GET /v1/events`):
    /// `on` or `off`.
    #[arg(long, env = "SESSIOND_EVENTS", value_enum, default_value_t = Toggle::On)]
    pub events: Toggle,

    /// Most events the log keeps (older ones are dropped first).
    #[arg(long, env = "SESSIOND_EVENTS_RETENTION", default_value_t = 100_000)]
    pub events_retention: usize,

    /// Oldest event the log keeps.
    #[arg(long, env = "SESSIOND_EVENTS_MAX_AGE", default_value = "24h", value_parser = parse_duration)]
    pub events_max_age: Duration,

    /// Log data writes too, as `updated` events.
    #[arg(long, env = "SESSIOND_EVENTS_INCLUDE_UPDATES")]
    pub events_include_updates: bool,

    /// Writes the async replication queue holds before refusing more (503).
    #[arg(long, env = "SESSIOND_REDIS_QUEUE", default_value_t = DEFAULT_REDIS_QUEUE,
          value_parser = clap::value_parser!(u32).range(1..=MAX_COUNT))]
    pub redis_queue: u32,

    /// Check the configuration, print it and exit without serving.
    #[arg(long)]
    pub check_config: bool,
}

/// `sessiond balance`.
#[derive(Debug, Clone, Args)]
pub struct BalanceArgs {
    /// Address the balancer listens on.
    #[arg(long, env = "SESSIOND_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// An app server (`http://host:port`); repeat for each, or give them
    /// comma separated.
    #[arg(long = "upstream", env = "SESSIOND_UPSTREAMS", value_delimiter = ',')]
    pub upstreams: Vec<String>,

    /// A file with more upstreams, one URL per line (`#` starts a comment).
    #[arg(long, env = "SESSIOND_UPSTREAMS_FILE")]
    pub upstreams_file: Option<std::path::PathBuf>,

    /// Address of the admin listener: /metrics, /stats.json and the HTML
    /// status page at /.
    #[arg(long, env = "SESSIOND_ADMIN", default_value = "127.0.0.1:8081")]
    pub admin: SocketAddr,

    /// Path the active health check requests on every upstream.
    #[arg(long, env = "SESSIOND_HEALTH_PATH", default_value = "/healthz")]
    pub health_path: String,

    /// How often each upstream is health-checked.
    #[arg(long, env = "SESSIOND_HEALTH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub health_interval: Duration,

    /// How long one health check may take before it counts as failed.
    #[arg(long, env = "SESSIOND_HEALTH_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub health_timeout: Duration,

    /// Consecutive good checks that bring a down upstream back.
    #[arg(long, env = "SESSIOND_HEALTH_RISE", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rise: u32,

    /// Consecutive failed checks that take an upstream out.
    #[arg(long, env = "SESSIOND_HEALTH_FALL", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub fall: u32,

    /// Time to open a connection to an upstream.
    #[arg(long, env = "SESSIOND_CONNECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Time an upstream has to send its response headers (then 504), and
    /// longest gap in its response body (then the answer is cut).
    #[arg(long, env = "SESSIOND_RESPONSE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub response_timeout: Duration,

    /// Longest a client may take to accept any of what is written to it
    /// (then its connection is closed, and the upstream freed).
    #[arg(long, env = "SESSIOND_SEND_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub send_timeout: Duration,

    /// Idle pooled upstream connections are closed after this.
    #[arg(long, env = "SESSIOND_UPSTREAM_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Time a client has for each request head, counted from when the
    /// balancer waits for one (after connecting and after each answer, so
    /// it is also the keep-alive idle timeout), and for its PROXY header
    /// and TLS handshake; an HTTP/2 connection idle this long is closed.
    #[arg(long, env = "SESSIOND_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Longest wait for the next piece of a request body (then 408).
    #[arg(long, env = "SESSIOND_BODY_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// Slowest average upload accepted once --body-timeout has passed, in
    /// bytes per second (0 turns the check off; then 408).
    #[arg(long, env = "SESSIOND_MIN_BODY_RATE", default_value = "500", value_parser = parse_bytes)]
    pub min_body_rate: u64,

    /// Largest request body passed to an upstream (then 413).
    #[arg(long, env = "SESSIOND_MAX_BODY_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub max_body_bytes: u64,

    /// Longest request line (then 414) or header line (then 431).
    #[arg(long, env = "SESSIOND_MAX_HEADER_LINE_BYTES", default_value = "8KiB", value_parser = parse_bytes)]
    pub max_header_line_bytes: u64,

    /// Longest request head, request line and headers together (then 431).
    #[arg(long, env = "SESSIOND_MAX_HEADER_BYTES", default_value = "32KiB", value_parser = parse_bytes)]
    pub max_header_bytes: u64,

    /// Client connections served at once; more are answered 503
    /// `too_many_connections` and closed.
    #[arg(long, env = "SESSIOND_MAX_CLIENT_CONNS", default_value_t = 10_000, value_parser = at_least_one)]
    pub max_client_conns: usize,

    /// Requests in flight per upstream (upgraded connections count);
    /// more wait in the queue. Unset: no limit.
    #[arg(long, env = "SESSIOND_MAX_CONNS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_conns: Option<u64>,

    /// Requests that may wait for a free upstream when every one is at
    /// --max-conns; more are answered 503 `overloaded`.
    #[arg(long, env = "SESSIOND_QUEUE", default_value_t = 256)]
    pub queue: usize,

    /// Longest wait in that queue (then 503 `overloaded`).
    #[arg(long, env = "SESSIOND_QUEUE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub queue_timeout: Duration,

    /// Ramp a new or recovered upstream's share of requests linearly from
    /// 0 to full over this time (0s: at once).
    #[arg(long, env = "SESSIOND_SLOW_START", default_value = "0s", value_parser = parse_duration)]
    pub slow_start: Duration,

    /// Longest wait for the in-flight requests (and upgraded connections)
    /// of a draining upstream, and of the balancer at shutdown.
    #[arg(long, env = "SESSIOND_BALANCE_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Bearer token of the upstreams API on the admin listener (without
    /// one, the API answers only on a loopback admin address).
    #[arg(long, env = "SESSIOND_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Every client connection starts with a PROXY protocol header (v1 or
    /// v2, from an L4 balancer in front); its source address feeds
    /// X-Forwarded-For. Connections without one are closed.
    #[arg(long, env = "SESSIOND_ACCEPT_PROXY_PROTOCOL")]
    pub accept_proxy_protocol: bool,

    /// Start every upstream connection with a PROXY protocol header naming
    /// the client (upstream connections are then not shared between
    /// client connections).
    #[arg(long, env = "SESSIOND_SEND_PROXY_PROTOCOL", value_enum)]
    pub send_proxy_protocol: Option<ProxyVersion>,

    /// PEM certificate chain: terminate TLS (HTTP/2 and HTTP/1.1 by ALPN).
    /// Read again on SIGHUP.
    #[arg(long, env = "SESSIOND_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "SESSIOND_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Unix socket through which a new `sessiond balance` started with the
    /// same path takes over the listening sockets (then this one drains
    /// and exits): restarts without a refused connection.
    #[arg(long, env = "SESSIOND_HANDOVER_SOCKET")]
    pub handover_socket: Option<std::path::PathBuf>,

    /// Log each request as a JSON line to this file (`-`: standard
    /// output), written at least every second; reopened on SIGHUP.
    #[arg(long, env = "SESSIOND_ACCESS_LOG")]
    pub access_log: Option<std::path::PathBuf>,

    /// Event-loop threads serving clients (default: one per CPU).
    #[arg(long, env = "SESSIOND_WORKERS")]
    pub workers: Option<usize>,

    /// Check the configuration, print it and exit without serving.
    #[arg(long)]
    pub check_config: bool,
}

impl BalanceArgs {
    /// Checks the flags (and reads the upstreams file) into a balancer
    /// configuration.
    pub fn balance_config(&self) -> Result<BalanceConfig, ConfigError> {
        refuse_blank(&self.admin_token, "--admin-token", "SESSIOND_ADMIN_TOKEN")?;
        let flags = self
            .upstreams
            .iter()
            .filter(|url| !url.trim().is_empty())
            .map(|url| UpstreamUrl::parse(url.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        let sources = UpstreamSources {
            flags,
            file: self.upstreams_file.clone(),
        };
        let upstreams = sources.read()?;
        if upstreams.is_empty() {
            return Err(ConfigError::NoUpstreams);
        }
        if !self.health_path.starts_with('/') {
            return Err(ConfigError::HealthPath(self.health_path.clone()));
        }
        let size = |bytes: u64| usize::try_from(bytes).unwrap_or(usize::MAX);
        let head = HeadLimits {
            max_line: size(self.max_header_line_bytes),
            max_total: size(self.max_header_bytes),
        };
        if head.max_line < 256 || head.max_total < head.max_line {
            return Err(ConfigError::Size {
                flag: "--max-header-line-bytes",
                min: 256,
                max: self.max_header_bytes,
                got: self.max_header_line_bytes,
            });
        }
        Ok(BalanceConfig {
            listen: self.listen,
            admin: self.admin,
            upstreams,
            sources,
            admin_token: self.admin_token.clone().map(Secret::new),
            health_path: self.health_path.clone(),
            health_interval: self.health_interval.max(Duration::from_millis(10)),
            health_timeout: self.health_timeout.max(Duration::from_millis(1)),
            rise: self.rise,
            fall: self.fall,
            connect_timeout: self.connect_timeout.max(Duration::from_millis(1)),
            response_timeout: self.response_timeout.max(Duration::from_millis(1)),
            idle_timeout: self.idle_timeout.max(Duration::from_millis(1)),
            header_timeout: self.header_timeout.max(Duration::from_millis(10)),
            send_timeout: self.send_timeout.max(Duration::from_millis(10)),
            body: BodyLimits {
                max_bytes: self.max_body_bytes,
                timeout: self.body_timeout.max(Duration::from_millis(10)),
                min_rate: self.min_body_rate,
            },
            head,
            max_client_conns: self.max_client_conns,
            max_conns: self.max_conns,
            queue: self.queue,
            queue_timeout: self.queue_timeout,
            slow_start: self.slow_start,
            drain_timeout: self.drain_timeout,
            accept_proxy_protocol: self.accept_proxy_protocol,
            send_proxy_protocol: self.send_proxy_protocol,
            tls: self
                .tls_cert
                .clone()
                .zip(self.tls_key.clone())
                .map(|(cert, key)| TlsFiles { cert, key }),
            handover_socket: self.handover_socket.clone(),
            access_log: self.access_log.clone(),
            workers: self
                .workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
        })
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--max-ttl`, `--max-lifetime` or `--events-max-age` is under a
    /// second (the longest, [`LONGEST_DURATION_SECS`], is refused when
    /// parsed: a session's times must be dates).
    #[error(
        "{flag} must be between 1s and {LONGEST_DURATION_SECS}s (100 years), got {}",
        humantime::format_duration(*.got)
    )]
    Duration {
        /// The flag.
        flag: &'static str,
        /// What was given.
        got: Duration,
    },
    /// `--default-ttl` is zero or above `--max-ttl`.
    #[error(
        "--default-ttl must be between 1s and --max-ttl ({max_ttl_secs}s), got {default_ttl_secs}s"
    )]
    DefaultTtl {
        /// What was given.
        default_ttl_secs: u64,
        /// The bound.
        max_ttl_secs: u64,
    },
    /// A count flag is outside what it may be.
    #[error("{flag} must be between {min} and {max}, got {got}")]
    Count {
        /// The flag.
        flag: &'static str,
        /// The least it may be.
        min: u64,
        /// The most it may be.
        max: u64,
        /// What was given.
        got: u64,
    },
    /// A size flag is outside what it may be.
    #[error("{flag} must be between {min} and {max} bytes, got {got}")]
    Size {
        /// The flag.
        flag: &'static str,
        /// The least it may be.
        min: u64,
        /// The most it may be.
        max: u64,
        /// What was given.
        got: u64,
    },
    /// An upstream is malformed.
    #[error(transparent)]
    Upstream(#[from] UpstreamUrlError),
    /// The upstreams file cannot be read, or holds a malformed address.
    #[error(transparent)]
    Sources(#[from] SourcesError),
    /// Neither `--upstream` nor the upstreams file names an upstream.
    #[error("no upstreams: give --upstream http://host:port (or --upstreams-file)")]
    NoUpstreams,
    /// `--health-path` is not a path.
    #[error("--health-path must start with /, got {0:?}")]
    HealthPath(String),
    /// With `--redis-cluster`, `--redis-prefix` holds a `}` that is not the
    /// end of a hash tag: a session and its tombstone would hash to
    /// different slots, and every delete would fail.
    #[error(
        "--redis-prefix {0:?} cannot be used with --redis-cluster: a `}}` outside a hash tag \
         (like `{{app}}:`) splits a session's keys over slots"
    )]
    ClusterPrefix(String),
    /// A `--redis` or `--redis-cluster` URL that is no Redis URL (the
    /// URL itself is not repeated: it may hold a password).
    #[error("{flag}: not a Redis URL it can use: {reason}")]
    RedisUrl {
        /// The flag.
        flag: &'static str,
        /// Why.
        reason: String,
    },
    /// `--auth-token` or `--admin-token` (or its environment variable) is
    /// set but blank: most likely a secret that was not filled in, which
    /// must not turn the token check off.
    #[error(
        "{flag} ({env}) is set but blank: give a token, or leave it unset to serve without one"
    )]
    BlankToken {
        /// The flag.
        flag: &'static str,
        /// Its environment variable.
        env: &'static str,
    },
}

/// The longest `--max-ttl` or `--max-lifetime`: 100 years, so that every
/// expiry is a date an RFC 3339 answer can spell.
pub const LONGEST_DURATION_SECS: u64 = 36_525 * 86_400;

/// A token that is set but blank is most likely a secret that was not
/// filled in: it must not turn the token check off.
fn refuse_blank(
    token: &Option<String>,
    flag: &'static str,
    env: &'static str,
) -> Result<(), ConfigError> {
    match token {
        Some(token) if token.trim().is_empty() => Err(ConfigError::BlankToken { flag, env }),
        _ => Ok(()),
    }
}

/// `duration` itself, when it is at least 1s (a duration flag is at most
/// [`LONGEST_DURATION_SECS`] once parsed); the caller keeps whatever
/// precision it needs (whole seconds or milliseconds).
fn checked_duration(flag: &'static str, duration: Duration) -> Result<Duration, ConfigError> {
    if duration.as_secs() >= 1 {
        Ok(duration)
    } else {
        Err(ConfigError::Duration {
            flag,
            got: duration,
        })
    }
}

impl ServeArgs {
    /// Checks the flags and turns them into a node configuration.
    pub fn node_config(&self) -> Result<NodeConfig, ConfigError> {
        refuse_blank(&self.auth_token, "--auth-token", "SESSIOND_AUTH_TOKEN")?;
        let default_ttl_secs = self.default_ttl.as_secs();
        let max_ttl_secs = checked_duration("--max-ttl", self.max_ttl)?.as_secs();
        let max_lifetime_ms = match self.max_lifetime {
            // At most 100 years of milliseconds, so the cast cannot truncate.
            Some(cap) => Some(checked_duration("--max-lifetime", cap)?.as_millis() as u64),
            None => None,
        };
        if default_ttl_secs == 0 || default_ttl_secs > max_ttl_secs {
            return Err(ConfigError::DefaultTtl {
                default_ttl_secs,
                max_ttl_secs,
            });
        }
        let max_session_bytes = usize::try_from(self.max_session_bytes).unwrap_or(usize::MAX);
        // The smallest session's data, `{}`, must fit.
        // Its answer must fit the largest frame.
        let most_session_bytes = MAX_FRAME_BYTES_CAP - FRAME_ENVELOPE_BYTES;
        if !(2..=most_session_bytes).contains(&max_session_bytes) {
            return Err(ConfigError::Size {
                flag: "--max-session-bytes",
                min: 2,
                max: most_session_bytes as u64,
                got: self.max_session_bytes,
            });
        }
        // A write's answer carries the session it made: a frame too small
        // for it would report an applied write as refused.
        let least_frame_bytes = max_session_bytes.saturating_add(FRAME_ENVELOPE_BYTES);
        let max_frame_bytes = self.max_frame_bytes.map_or(least_frame_bytes, |bytes| {
            usize::try_from(bytes).unwrap_or(usize::MAX)
        });
        if !(least_frame_bytes..=MAX_FRAME_BYTES_CAP).contains(&max_frame_bytes) {
            return Err(ConfigError::Size {
                flag: "--max-frame-bytes (at least --max-session-bytes + 64KiB, so a session's answer fits)",
                min: least_frame_bytes as u64,
                max: MAX_FRAME_BYTES_CAP as u64,
                got: max_frame_bytes as u64,
            });
        }
        let least_memory = charge_of(2);
        if self.max_memory < least_memory {
            return Err(ConfigError::Size {
                flag: "--max-memory (room for one session at least)",
                min: least_memory,
                max: u64::MAX,
                got: self.max_memory,
            });
        }
        if self.max_memory < charge_of(max_session_bytes) {
            tracing::warn!(
                max_memory = self.max_memory,
                max_session_bytes,
                "a session of --max-session-bytes does not fit in --max-memory: such sessions \
                 are refused as the store being full"
            );
        }
        let memory_only = self.redis.is_none() && self.redis_cluster.is_empty();
        let ignored = self.ignored_without_redis();
        if memory_only && !ignored.is_empty() {
            tracing::warn!(
                flags = ?ignored,
                "these flags have no effect without --redis or --redis-cluster"
            );
        }
        Ok(NodeConfig {
            http: self.http,
            tcp: self.tcp,
            tcp_limits: TcpLimits {
                max_frame_bytes,
                max_connections: self.max_connections,
                max_in_flight: self.max_in_flight,
                idle_timeout: self.idle_timeout.max(Duration::from_millis(10)),
                handshake_timeout: self.handshake_timeout.max(Duration::from_millis(10)),
            },
            http_limits: self.http_limits()?,
            auth_token: self.auth_token.clone().map(Secret::new),
            store: StoreConfig {
                shards: usize::from(self.shards),
                max_memory: Some(self.max_memory),
                // With Redis, memory is a cache of what Redis (or the
                // write-behind queue) holds: a full one drops the least
                // recently used copies, it never refuses a write.
                when_full: match self.when_full {
                    _ if !memory_only => WhenFull::EvictLru,
                    WhenFullPolicy::Reject => WhenFull::Reject,
                    WhenFullPolicy::EvictLru => WhenFull::EvictLru,
                },
                max_lifetime_ms,
                // With Redis the log and the user index live in Redis.
                events: self.events_config()?.filter(|_| memory_only),
                user_index: memory_only,
            },
            service: ServiceConfig {
                user_limit: UserLimit {
                    max_sessions: self.max_sessions_per_user,
                    when_full: match self.when_user_full {
                        WhenUserFullPolicy::EvictOldest => WhenUserFull::EvictOldest,
                        WhenUserFullPolicy::Reject => WhenUserFull::Reject,
                    },
                },
                default_ttl_secs,
                max_ttl_secs,
                max_session_bytes,
            },
            drain_timeout: self.drain_timeout,
            sweep_interval: self.sweep_interval.max(Duration::from_millis(1)),
            sweep_batch: self.sweep_batch,
            redis: self.redis_config()?,
        })
    }

    fn http_limits(&self) -> Result<HttpLimits, ConfigError> {
        let max_head_bytes = usize::try_from(self.http_max_head_bytes).unwrap_or(usize::MAX);
        if !(MIN_HEAD_BYTES..=MAX_HEAD_BYTES).contains(&max_head_bytes) {
            return Err(ConfigError::Size {
                flag: "--http-max-head-bytes",
                min: MIN_HEAD_BYTES as u64,
                max: MAX_HEAD_BYTES as u64,
                got: self.http_max_head_bytes,
            });
        }
        let least = Duration::from_millis(10);
        Ok(HttpLimits {
            max_connections: self.max_http_connections as usize,
            header_timeout: self.http_header_timeout.max(least),
            body_timeout: self.http_body_timeout.max(least),
            idle_timeout: self.http_idle_timeout.max(least),
            max_head_bytes,
        })
    }

    /// The Redis flags set to other than their defaults (they act only
    /// with `--redis` or `--redis-cluster`).
    fn ignored_without_redis(&self) -> Vec<&'static str> {
        [
            ("--redis-mode", self.redis_mode != RedisModeArg::Sync),
            ("--consistency", self.consistency != ConsistencyArg::Cached),
            ("--redis-prefix", self.redis_prefix != DEFAULT_REDIS_PREFIX),
            ("--redis-queue", self.redis_queue != DEFAULT_REDIS_QUEUE),
            (
                "--redis-cluster-max-in-flight",
                self.redis_cluster_max_in_flight != DEFAULT_CLUSTER_MAX_IN_FLIGHT,
            ),
        ]
        .into_iter()
        .filter_map(|(flag, set)| set.then_some(flag))
        .collect()
    }

    fn redis_config(&self) -> Result<Option<RedisConfig>, ConfigError> {
        // Parsed as the start parses them (one client, or one cluster
        // client over every URL: it wants one scheme, password and
        // database), without connecting.
        let refused = |flag| {
            move |err: redis::RedisError| ConfigError::RedisUrl {
                flag,
                reason: err.to_string(),
            }
        };
        if let Some(url) = &self.redis {
            redis::Client::open(url.as_str()).map_err(refused("--redis"))?;
        } else if !self.redis_cluster.is_empty() {
            redis::cluster::ClusterClient::new(self.redis_cluster.iter().map(String::as_str))
                .map_err(refused("--redis-cluster"))?;
        }
        let target = match (&self.redis, self.redis_cluster.is_empty()) {
            (Some(url), _) => RedisTarget::Single(url.clone()),
            (None, false) if !prefix_keeps_tombstones_in_slot(&self.redis_prefix) => {
                return Err(ConfigError::ClusterPrefix(self.redis_prefix.clone()));
            }
            (None, false) => RedisTarget::Cluster {
                urls: self.redis_cluster.clone(),
                max_in_flight: self.redis_cluster_max_in_flight as usize,
            },
            (None, true) => return Ok(None),
        };
        Ok(Some(RedisConfig {
            target,
            mode: match self.redis_mode {
                RedisModeArg::Sync => ReplicationMode::Sync,
                RedisModeArg::Async => ReplicationMode::Async,
            },
            consistency: match self.consistency {
                ConsistencyArg::Cached => Consistency::Cached,
                ConsistencyArg::Strong => Consistency::Strong,
            },
            prefix: self.redis_prefix.clone(),
            queue_capacity: self.redis_queue as usize,
            events: self.events_config()?,
        }))
    }

    fn events_config(&self) -> Result<Option<EventLogConfig>, ConfigError> {
        if self.events == Toggle::Off {
            return Ok(None);
        }
        if !(1..=MAX_EVENTS_RETENTION).contains(&self.events_retention) {
            return Err(ConfigError::Count {
                flag: "--events-retention",
                min: 1,
                max: MAX_EVENTS_RETENTION as u64,
                got: self.events_retention as u64,
            });
        }
        // Under a second, every sweep would drop every event.
        let max_age = checked_duration("--events-max-age", self.events_max_age)?;
        Ok(Some(EventLogConfig {
            retention: self.events_retention,
            max_age_ms: max_age.as_millis() as u64,
            include_updates: self.events_include_updates,
        }))
    }
}

/// A count of at least 1 (0 would serve nothing, or sweep nothing).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("0 is not allowed: at least 1".to_owned()),
        Ok(count) => Ok(count),
        Err(err) => Err(err.to_string()),
    }
}

/// `--redis-queue`'s default.
const DEFAULT_REDIS_QUEUE: u32 = 100_000;
/// `--redis-cluster-max-in-flight`'s default.
const DEFAULT_CLUSTER_MAX_IN_FLIGHT: u32 = 24;
/// `--redis-prefix`'s default.
const DEFAULT_REDIS_PREFIX: &str = "sessiond:";

/// The largest `--redis-queue` and `--redis-cluster-max-in-flight`.
const MAX_COUNT: i64 = 100_000_000;

/// A duration like `30s` or `5m`, of at most [`LONGEST_DURATION_SECS`] (100
/// years): a timer past that overflows the clock.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|err| err.to_string())?;
    if duration.as_secs() > LONGEST_DURATION_SECS {
        return Err("a duration of at most 100 years".to_owned());
    }
    Ok(duration)
}

/// Parses a byte size with optional human units (`512MiB`, `1GB`, `4096`).
fn parse_bytes(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|err| format!("not a byte size like 512MiB: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_accept_human_units() {
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("1 GiB"), Ok(1 << 30));
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn defaults_make_a_valid_config() {
        let cli = Cli::try_parse_from(["sessiond", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        let config = args.node_config().unwrap();
        assert_eq!(config.service.default_ttl_secs, 1800);
        assert_eq!(config.store.max_memory, Some(1 << 30));
        assert_eq!(config.service.max_session_bytes, 1 << 20);
        assert_eq!(config.http_limits.max_connections, 1024);
        assert_eq!(config.http_limits.header_timeout, Duration::from_secs(10));
        assert_eq!(config.http_limits.body_timeout, Duration::from_secs(30));
        assert_eq!(config.http_limits.idle_timeout, Duration::from_secs(75));
        assert_eq!(config.http_limits.max_head_bytes, 64 << 10);
    }

    #[test]
    fn balance_needs_http_upstreams() {
        assert!(matches!(balance(&[]), Err(ConfigError::NoUpstreams)));
        assert!(matches!(
            balance(&["--upstream", "https://a:1"]),
            Err(ConfigError::Upstream(UpstreamUrlError::NotHttp { .. }))
        ));
        let config = balance(&[
            "--upstream",
            "http://a:1,http://b:2",
            "--upstream",
            "http://c:3",
        ])
        .unwrap();
        assert_eq!(config.upstreams.len(), 3);
    }

    /// `sessiond serve` with `args`, parsed.
    fn serve_args(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from([&["sessiond", "serve"], args].concat()).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        args
    }

    fn serve(args: &[&str]) -> Result<NodeConfig, ConfigError> {
        serve_args(args).node_config()
    }

    fn balance(args: &[&str]) -> Result<BalanceConfig, ConfigError> {
        let cli = Cli::try_parse_from([&["sessiond", "balance"], args].concat()).unwrap();
        let Command::Balance(args) = cli.command else {
            panic!("expected balance");
        };
        args.balance_config()
    }

    #[test]
    fn out_of_range_flags_are_refused_with_what_was_given() {
        assert!(matches!(
            serve(&["--default-ttl", "2h", "--max-ttl", "1h"]),
            Err(ConfigError::DefaultTtl {
                default_ttl_secs: 7200,
                max_ttl_secs: 3600
            })
        ));
        let zero = serve(&["--max-ttl", "0s"]).unwrap_err();
        assert!(matches!(
            zero,
            ConfigError::Duration {
                flag: "--max-ttl",
                got: Duration::ZERO
            }
        ));
        assert!(zero.to_string().ends_with("got 0s"), "{zero}");
        let short = serve(&["--max-lifetime", "500ms"]).unwrap_err();
        assert_eq!(
            short.to_string(),
            "--max-lifetime must be between 1s and 3155760000s (100 years), got 500ms"
        );
        assert!(matches!(
            serve(&["--max-session-bytes", "16EiB", "--max-frame-bytes", "1MiB"]),
            Err(ConfigError::Size {
                flag: "--max-session-bytes",
                ..
            })
        ));
        assert_eq!(
            serve(&["--max-session-bytes", "1MiB", "--max-frame-bytes", "64KiB"])
                .unwrap_err()
                .to_string(),
            "--max-frame-bytes (at least --max-session-bytes + 64KiB, so a session's answer fits) \
             must be between 1114112 and 67108864 bytes, got 65536"
        );
        assert_eq!(
            serve(&[
                "--max-session-bytes",
                "1MiB",
                "--max-frame-bytes",
                "1088KiB"
            ])
            .map(|config| config.tcp_limits.max_frame_bytes)
            .ok(),
            Some(1088 << 10)
        );
        assert_eq!(
            serve(&["--max-ttl", "100y", "--max-lifetime", "1y"])
                .map(|config| (config.service.max_ttl_secs, config.store.max_lifetime_ms))
                .ok(),
            Some((3_155_760_000, Some(31_557_600_000)))
        );
        assert_eq!(
            serve(&["--max-lifetime", "1500ms"])
                .map(|config| config.store.max_lifetime_ms)
                .ok(),
            Some(Some(1_500)),
            "a cap keeps its milliseconds"
        );
        assert_eq!(
            serve(&["--events-max-age", "500ms"])
                .unwrap_err()
                .to_string(),
            "--events-max-age must be between 1s and 3155760000s (100 years), got 500ms"
        );
        assert!(serve(&["--events", "off", "--events-max-age", "0s"]).is_ok());
        for retention in ["0", "10000001"] {
            assert!(matches!(
                serve(&["--events-retention", retention]),
                Err(ConfigError::Count {
                    flag: "--events-retention",
                    ..
                })
            ));
        }
        assert_eq!(
            serve(&["--max-session-bytes", "64MiB"])
                .unwrap_err()
                .to_string(),
            "--max-session-bytes must be between 2 and 67043328 bytes, got 67108864"
        );
        assert!(matches!(
            serve(&["--max-session-bytes", "1"]),
            Err(ConfigError::Size {
                flag: "--max-session-bytes",
                min: 2,
                ..
            })
        ));
        assert!(matches!(
            serve(&["--max-memory", "0"]),
            Err(ConfigError::Size { got: 0, .. })
        ));
        assert!(serve(&["--max-memory", "4KiB"]).is_ok());
        let small_head = serve(&["--http-max-head-bytes", "10"]).unwrap_err();
        assert!(matches!(
            small_head,
            ConfigError::Size {
                flag: "--http-max-head-bytes",
                got: 10,
                ..
            }
        ));
        assert_eq!(
            small_head.to_string(),
            "--http-max-head-bytes must be between 1024 and 1048576 bytes, got 10"
        );
    }

    #[test]
    fn a_blank_auth_token_is_refused_rather_than_turning_the_check_off() {
        for blank in ["", "  "] {
            assert!(matches!(
                serve(&["--auth-token", blank]),
                Err(ConfigError::BlankToken { .. })
            ));
        }
        let config = serve(&["--auth-token", "s3cret"]).unwrap();
        assert!(config.auth_token.is_some());
        assert!(serve(&[]).unwrap().auth_token.is_none());
        // The balancer's admin token too: blank, it opened the upstreams
        // API to anyone on a loopback admin address.
        let with_token =
            |token: &str| balance(&["--upstream", "http://a:1", "--admin-token", token]);
        let blank = with_token(" ").unwrap_err();
        assert_eq!(
            blank.to_string(),
            "--admin-token (SESSIOND_ADMIN_TOKEN) is set but blank: give a token, or leave it \
             unset to serve without one"
        );
        assert!(with_token("s3cret").unwrap().admin_token.is_some());
    }

    #[test]
    fn durations_past_100_years_and_counts_out_of_range_are_refused_when_parsed() {
        let huge = "10000000000000000000s";
        for args in [
            &["sessiond", "serve", "--http-idle-timeout", huge][..],
            &["sessiond", "serve", "--idle-timeout", huge],
            &["sessiond", "serve", "--max-ttl", "200years"],
            &["sessiond", "serve", "--max-lifetime", "99999999999999999s"],
            &[
                "sessiond",
                "balance",
                "--upstream",
                "http://a:1",
                "--header-timeout",
                huge,
            ],
            &[
                "sessiond",
                "balance",
                "--upstream",
                "http://a:1",
                "--response-timeout",
                "101y",
            ],
            &["sessiond", "serve", "--redis-queue", "18446744073709551615"],
            &["sessiond", "serve", "--redis-cluster-max-in-flight", "0"],
        ] {
            let refused = Cli::try_parse_from(args).map(drop).unwrap_err();
            assert_eq!(
                refused.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}"
            );
        }
        assert_eq!(
            parse_duration("100y"),
            Ok(Duration::from_secs(100 * 31_557_600))
        );
        for args in [
            &["sessiond", "serve", "--sweep-batch", "0"][..],
            &["sessiond", "serve", "--max-in-flight", "0"],
            &[
                "sessiond",
                "balance",
                "--upstream",
                "http://a:1",
                "--rise",
                "0",
            ],
            &[
                "sessiond",
                "balance",
                "--upstream",
                "http://a:1",
                "--max-client-conns",
                "0",
            ],
        ] {
            let refused = Cli::try_parse_from(args).map(drop).unwrap_err();
            assert_eq!(
                refused.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}"
            );
        }
    }

    /// One environment shared by a node and a balancer sets each only its
    /// own flags: `SESSIOND_IDLE_TIMEOUT` and `SESSIOND_DRAIN_TIMEOUT`
    /// were read by both, with other meanings.
    #[test]
    fn serve_and_balance_read_no_environment_variable_in_common() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let envs = |name: &str| -> std::collections::BTreeSet<String> {
            let command = cli.find_subcommand(name).expect("the subcommand");
            command
                .get_arguments()
                .filter_map(|arg| arg.get_env())
                .map(|env| env.to_string_lossy().into_owned())
                .collect()
        };
        let (serve, balance) = (envs("serve"), envs("balance"));
        assert!(serve.len() > 20 && balance.len() > 20);
        let shared: Vec<_> = serve.intersection(&balance).collect();
        assert!(shared.is_empty(), "read by both: {shared:?}");
    }

    #[test]
    fn redis_flags_set_without_redis_are_named() {
        assert!(serve_args(&[]).ignored_without_redis().is_empty());
        assert_eq!(
            serve_args(&["--redis-mode", "async", "--redis-queue", "5"]).ignored_without_redis(),
            ["--redis-mode", "--redis-queue"]
        );
    }

    #[test]
    fn a_redis_url_that_does_not_parse_is_refused_without_repeating_it() {
        for args in [
            &["--redis", "http://localhost:6379"][..],
            &["--redis", ""],
            &["--redis-cluster", "redis://127.0.0.1:7000,ftp://x:pw@y"],
            &["--redis-cluster", "redis+unix:///run/redis.sock"],
            &[
                "--redis-cluster",
                "redis://:pw@a:7000,redis://:other@b:7000",
            ],
        ] {
            let refused = serve(args).unwrap_err();
            assert!(
                matches!(refused, ConfigError::RedisUrl { .. }),
                "{args:?}: {refused}"
            );
            assert!(!refused.to_string().contains("pw@"), "{refused}");
        }
        assert!(serve(&["--redis", "redis://:pw@127.0.0.1:6379/2"]).is_ok());
        assert!(serve(&["--redis", "redis+unix:///run/redis.sock?pass=x"]).is_ok());
    }

    #[test]
    fn a_cluster_prefix_that_splits_a_sessions_keys_is_refused() {
        let cluster = ["--redis-cluster", "redis://127.0.0.1:7000"];
        let split = serve(&[cluster[0], cluster[1], "--redis-prefix", "app}:"]).unwrap_err();
        assert!(matches!(&split, ConfigError::ClusterPrefix(prefix) if prefix == "app}:"));
        assert!(split.to_string().contains("{app}:"), "{split}");
        for prefix in ["{app}:", "sessiond:"] {
            let config = serve(&[cluster[0], cluster[1], "--redis-prefix", prefix]).unwrap();
            assert_eq!(
                config.redis.map(|redis| redis.prefix).as_deref(),
                Some(prefix)
            );
        }
        // One Redis server has no slots: any prefix will do.
        assert!(
            serve(&[
                "--redis",
                "redis://127.0.0.1:6379",
                "--redis-prefix",
                "app}:"
            ])
            .is_ok()
        );
    }
}
