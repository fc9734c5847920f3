//! Real `redis-server` processes for the tests: one server (optionally with
//! AOF), or a local 3-master Redis Cluster, on free loopback ports in
//! temporary directories, stopped when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a Redis server may take to answer PING after starting.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The `redis-server` binary, or a panic that says how to install it.
pub fn redis_server_binary() -> PathBuf {
    find_on_path("redis-server").unwrap_or_else(|| {
        panic!(
            "redis-server is not installed. Install it with `apt-get install redis-server` \
             (scripts/test.sh does this for you), then run the tests again."
        )
    })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A free loopback port (and, for cluster nodes, its bus port + 10000 too).
fn free_port(with_bus: bool) -> u16 {
    for _ in 0..200 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("cannot bind a loopback port");
        if !with_bus {
            return port;
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair found");
}

/// Sends one inline command and returns the raw reply (waiting for it at
/// most 2 s).
pub fn raw_command(port: u16, command: &str) -> std::io::Result<String> {
    raw_command_within(port, command, Duration::from_secs(2))
}

/// [`raw_command`], waiting for the reply at most `limit`.
pub fn raw_command_within(port: u16, command: &str, limit: Duration) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(limit))?;
    stream.write_all(format!("{command}\r\n").as_bytes())?;
    let mut buffer = vec![0u8; 64 * 1024];
    let read = stream.read(&mut buffer)?;
    Ok(String::from_utf8_lossy(&buffer[..read]).into_owned())
}

fn wait_for_ping(port: u16, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if raw_command(port, "PING").is_ok_and(|reply| reply.starts_with("+PONG")) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("redis-server on port {port} exited with {status}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server on port {port} did not answer PING");
}

/// One `redis-server` process.
pub struct RedisServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    tls: bool,
}

impl RedisServer {
    /// A server without persistence.
    pub fn start() -> Self {
        Self::spawn(
            free_port(false),
            tempfile::tempdir().expect("tempdir"),
            &["--save", "", "--appendonly", "no"],
        )
    }

    /// A server without persistence that accepts `DEBUG SLEEP` from
    /// loopback, to stall it on purpose.
    pub fn start_with_debug() -> Self {
        Self::spawn(
            free_port(false),
            tempfile::tempdir().expect("tempdir"),
            &[
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",
                "local",
            ],
        )
    }

    /// A server with AOF on and fsync on every write, so a restart (even
    /// after SIGKILL) keeps every acknowledged write.
    pub fn start_with_aof() -> Self {
        Self::spawn(
            free_port(false),
            tempfile::tempdir().expect("tempdir"),
            &[
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
        )
    }

    /// A server that only speaks TLS, with a self-signed certificate for
    /// 127.0.0.1 made by `openssl`; [`url`](Self::url) is `rediss://...`
    /// and [`tls_ca`](Self::tls_ca) the certificate a client must trust.
    pub fn start_with_tls() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        let (ca, ca_key, cert, key) = (
            path("ca.pem"),
            path("ca.key"),
            path("cert.pem"),
            path("key.pem"),
        );
        let (csr, ext) = (path("server.csr"), path("server.ext"));
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("ext file");
        // A CA, and a server certificate for 127.0.0.1 signed by it.
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=sessiond test CA",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &key,
            "-out",
            &csr,
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ]);
        let port = free_port(false);
        let mut server = Self::spawn_unchecked(
            port,
            dir,
            &[
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
        );
        server.tls = true;
        server.wait_for_log("Ready to accept connections");
        server
    }

    fn wait_for_log(&mut self, text: &str) {
        let log = self.dir.path().join("redis.log");
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if std::fs::read_to_string(&log).is_ok_and(|content| content.contains(text)) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let content = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("redis-server exited with {status}:\n{content}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server never logged {text:?}");
    }

    fn spawn(port: u16, dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let mut server = Self::spawn_unchecked(port, dir, extra);
        let log = server.dir.path().join("redis.log");
        wait_for_ping(server.port, &mut server.child, &log);
        server
    }

    fn spawn_unchecked(port: u16, dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir.path().to_string_lossy(),
            "--logfile",
            "redis.log",
            "--daemonize",
            "no",
        ]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect();
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let child = start_process(&args);
        Self {
            child,
            port,
            dir,
            args,
            tls: false,
        }
    }

    /// The CA certificate (PEM) that signed a TLS server's certificate.
    pub fn tls_ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` with TLS).
    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://127.0.0.1:{}", self.port)
        } else {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    /// Its process id (to freeze it, say).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server with SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and directory (its AOF, if
    /// any, is replayed).
    pub fn restart(&mut self) {
        self.kill();
        self.child = start_process(&self.args);
        let log = self.dir.path().join("redis.log");
        wait_for_ping(self.port, &mut self.child, &log);
    }
}

/// Runs `openssl` with `args`, which must succeed.
fn openssl(args: &[&str]) {
    let made = Command::new("openssl")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is needed for the TLS test (apt-get install openssl)");
    assert!(made.success(), "openssl {args:?} failed");
}

fn start_process(args: &[String]) -> Child {
    Command::new(redis_server_binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start redis-server")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How [`RedisCluster::start_with`] builds a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterOptions {
    /// Replicas of each of the three masters (0 or more).
    pub replicas_per_master: usize,
    /// AOF on with fsync on every write, so a node restarted (even after
    /// SIGKILL) keeps every write it acknowledged.
    pub aof: bool,
    /// `cluster-require-full-coverage`: with `false` the live masters keep
    /// serving their slots while another master's slots are uncovered.
    pub require_full_coverage: bool,
}

impl Default for ClusterOptions {
    /// Three masters, no replicas, no persistence, Redis's default
    /// coverage rule.
    fn default() -> Self {
        Self {
            replicas_per_master: 0,
            aof: false,
            require_full_coverage: true,
        }
    }
}

/// Node timeout of the test clusters: how long a master may be silent
/// before the others mark it failed (and a replica takes over).
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 2_000;

/// Slot ranges of the three masters.
const MASTER_SLOTS: [(u16, u16); 3] = [(0, 5460), (5461, 10922), (10923, 16383)];

/// A local Redis Cluster of three masters, optionally with replicas.
pub struct RedisCluster {
    /// The masters as started (`nodes[0..3]`), then their replicas in the
    /// same order (`nodes[3..6]` replicate masters 0, 1, 2, and so on).
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them into a cluster
    /// with all 16384 slots spread over them.
    pub fn start() -> Self {
        Self::start_with(ClusterOptions::default())
    }

    /// Starts a cluster built as `options` say and waits until every node
    /// reports `cluster_state:ok` (and every replica is in sync).
    pub fn start_with(options: ClusterOptions) -> Self {
        let count = 3 * (1 + options.replicas_per_master);
        let coverage = if options.require_full_coverage {
            "yes"
        } else {
            "no"
        };
        let persistence: &[&str] = if options.aof {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let timeout = CLUSTER_NODE_TIMEOUT_MS.to_string();
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| {
                let mut args = vec![
                    "--save",
                    "",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &timeout,
                    "--cluster-require-full-coverage",
                    coverage,
                    // `DEBUG SLEEP` stalls a node on purpose.
                    "--enable-debug-command",
                    "local",
                ];
                args.extend_from_slice(persistence);
                RedisServer::spawn(
                    free_port(true),
                    tempfile::tempdir().expect("tempdir"),
                    &args,
                )
            })
            .collect();
        for (node, (first, last)) in nodes.iter().zip(MASTER_SLOTS) {
            let reply = raw_command(node.port, &format!("CLUSTER ADDSLOTSRANGE {first} {last}"))
                .expect("CLUSTER ADDSLOTSRANGE");
            assert!(reply.starts_with("+OK"), "ADDSLOTSRANGE: {reply}");
        }
        // Every node meets the first.
        for node in &nodes[1..] {
            let reply = raw_command(
                node.port,
                &format!("CLUSTER MEET 127.0.0.1 {}", nodes[0].port),
            )
            .expect("CLUSTER MEET");
            assert!(reply.starts_with("+OK"), "MEET: {reply}");
        }
        let cluster = Self { nodes };
        cluster.wait_for_state(count, Duration::from_secs(30));
        for (index, replica) in cluster.nodes.iter().enumerate().skip(3) {
            let master = node_id(cluster.nodes[index % 3].port);
            cluster.until(
                Duration::from_secs(30),
                "the replica knows its master",
                || {
                    raw_command(replica.port, &format!("CLUSTER REPLICATE {master}"))
                        .is_ok_and(|reply| reply.starts_with("+OK"))
                },
            );
        }
        for replica in &cluster.nodes[3..] {
            cluster.until(Duration::from_secs(30), "the replica is in sync", || {
                raw_command(replica.port, "INFO replication")
                    .is_ok_and(|info| info.contains("master_link_status:up"))
            });
        }
        cluster.wait_for_state(count, Duration::from_secs(30));
        cluster
    }

    /// Polls `done` every 100 ms, panicking with `what` after `within`.
    fn until(&self, within: Duration, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within {within:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_for_state(&self, count: usize, within: Duration) {
        let known = format!("cluster_known_nodes:{count}");
        self.until(within, "the Redis Cluster reaches cluster_state:ok", || {
            self.nodes.iter().all(|node| {
                raw_command(node.port, "CLUSTER INFO")
                    .is_ok_and(|info| info.contains("cluster_state:ok") && info.contains(&known))
            })
        });
    }

    /// The masters' URLs, comma separated (for `--redis-cluster`).
    pub fn urls(&self) -> String {
        self.nodes[..3]
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Which of the three masters (0, 1, 2) serves `slot` as started.
    pub fn master_of_slot(slot: u16) -> usize {
        MASTER_SLOTS
            .iter()
            .position(|&(first, last)| (first..=last).contains(&slot))
            .expect("a slot is below 16384")
    }
}

/// A cluster node's id (`CLUSTER MYID`).
pub fn node_id(port: u16) -> String {
    let reply = raw_command(port, "CLUSTER MYID").expect("CLUSTER MYID");
    // A bulk string: `$40\r\n<id>\r\n`.
    reply
        .lines()
        .nth(1)
        .map(str::trim)
        .filter(|id| id.len() == 40)
        .unwrap_or_else(|| panic!("CLUSTER MYID answered {reply:?}"))
        .to_owned()
}

/// Whether the node on `port` reports itself a master (`ROLE`, whose
/// first element is `master` or `slave`).
pub fn is_master(port: u16) -> bool {
    raw_command(port, "ROLE").is_ok_and(|reply| reply.lines().nth(2) == Some("master"))
}

/// The cluster slot of `key` (CRC16/XMODEM of the key modulo 16384; the
/// tests' keys have no `{hash tag}`).
pub fn key_slot(key: &str) -> u16 {
    let crc = key.bytes().fold(0u16, |crc, byte| {
        (0..8).fold(crc ^ (u16::from(byte) << 8), |crc, _| {
            if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            }
        })
    });
    crc % 16_384
}
