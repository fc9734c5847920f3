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

/// Sends one inline command and returns the raw reply.
pub fn raw_command(port: u16, command: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
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

/// A local Redis Cluster of three masters (no replicas).
pub struct RedisCluster {
    /// The masters.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them into a cluster
    /// with all 16384 slots spread over them.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let dir = tempfile::tempdir().expect("tempdir");
                RedisServer::spawn(
                    free_port(true),
                    dir,
                    &[
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            })
            .collect();
        // Slots 0..16383 split in three ranges, then every node meets the first.
        let ranges = [(0, 5460), (5461, 10922), (10923, 16383)];
        for (node, (first, last)) in nodes.iter().zip(ranges) {
            let reply = raw_command(node.port, &format!("CLUSTER ADDSLOTSRANGE {first} {last}"))
                .expect("CLUSTER ADDSLOTSRANGE");
            assert!(reply.starts_with("+OK"), "ADDSLOTSRANGE: {reply}");
        }
        for node in &nodes[1..] {
            let reply = raw_command(
                node.port,
                &format!("CLUSTER MEET 127.0.0.1 {}", nodes[0].port),
            )
            .expect("CLUSTER MEET");
            assert!(reply.starts_with("+OK"), "MEET: {reply}");
        }
        let cluster = Self { nodes };
        cluster.wait_until_ok();
        cluster
    }

    fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let all_ok = self.nodes.iter().all(|node| {
                raw_command(node.port, "CLUSTER INFO").is_ok_and(|info| {
                    info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
                })
            });
            if all_ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the Redis Cluster did not reach cluster_state:ok");
    }

    /// The masters' URLs, comma separated (for `--redis-cluster`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}
