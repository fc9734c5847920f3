//! Spawning the project's binaries as real processes.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a process may take to say it is listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The path of a binary of this workspace, built (once per test process)
/// with the same profile as the tests, so a test never runs a stale binary.
///
/// `target` is `package:bin`, e.g. `sessiond:sessiond`, or
/// `package:example:name[:features]` for an example.
pub fn binary(target: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let parts: Vec<&str> = target.split(':').collect();
    let (package, kind, name, features) = match parts.as_slice() {
        [package, bin] => (*package, "--bin", *bin, None),
        [package, "example", name] => (*package, "--example", *name, None),
        [package, "example", name, features] => (*package, "--example", *name, Some(*features)),
        _ => panic!("binary target must be package:bin or package:example:name[:features]"),
    };
    let profile_dir = profile_dir();
    if !built.iter().any(|done| done == target) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut command = Command::new(cargo);
        command.args(["build", "--quiet", "-p", package, kind, name]);
        // What cargo set for this test process only: some build scripts
        // (ring's) track e.g. CARGO_MANIFEST_DIR, and inheriting it made
        // every such build (and the next plain `cargo build`) rebuild
        // ring, rustls, redis and sessiond, some 20 s each time.
        for (variable, _) in std::env::vars_os() {
            if variable.to_str().is_some_and(set_for_the_test_only) {
                command.env_remove(variable);
            }
        }
        if profile_dir.ends_with("release") {
            command.arg("--release");
        }
        if let Some(features) = features {
            command.args(["--features", features]);
        }
        let status = command
            .status()
            .expect("cannot run cargo to build the binary");
        assert!(status.success(), "building {target} failed");
        built.push(target.to_owned());
    }
    let path = if kind == "--example" {
        profile_dir.join("examples").join(name)
    } else {
        profile_dir.join(name)
    };
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Whether `variable` is one cargo sets for the test process itself (its
/// package's manifest and metadata), not for the build.
fn set_for_the_test_only(variable: &str) -> bool {
    [
        "CARGO_MANIFEST_",
        "CARGO_PKG_",
        "CARGO_CRATE_",
        "CARGO_PRIMARY_PACKAGE",
    ]
    .iter()
    .any(|prefix| variable.starts_with(prefix))
        || variable == "CARGO_TARGET_TMPDIR"
}

/// `target/debug` or `target/release`: where this test executable lives.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .expect("test binary is not inside target/<profile>/deps")
}

/// A running `sessiond serve` process; killed when dropped.
pub struct Sessiond {
    process: Process,
    args: Vec<String>,
    env: Vec<(String, String)>,
    nofile: Option<(u64, u64)>,
    /// Address of the HTTP API.
    pub http: SocketAddr,
    /// Address of the binary protocol.
    pub tcp: SocketAddr,
}

impl Sessiond {
    /// Starts `sessiond serve` on ephemeral loopback ports with extra `args`.
    pub fn start(args: &[&str]) -> Self {
        Self::start_at("127.0.0.1:0", "127.0.0.1:0", args)
    }

    /// Starts `sessiond serve` on the given addresses (to restart a node
    /// where it was).
    pub fn start_at(http: &str, tcp: &str, args: &[&str]) -> Self {
        Self::start_with_env(http, tcp, args, &[])
    }

    /// [`start_at`](Self::start_at) with extra environment variables.
    pub fn start_with_env(http: &str, tcp: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut all: Vec<String> = ["serve", "--http", http, "--tcp", tcp]
            .map(String::from)
            .to_vec();
        all.extend(args.iter().map(|arg| (*arg).to_owned()));
        let env = env
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        Self::spawn(all, env, None)
    }

    /// [`start`](Self::start) with the node's descriptor limit
    /// (`RLIMIT_NOFILE`) set to `soft` and `hard` by `prlimit(1)`: the limit
    /// of that process only, never of the machine or of the tests.
    pub fn start_with_nofile(soft: u64, hard: u64, args: &[&str]) -> Self {
        let mut all: Vec<String> = ["serve", "--http", "127.0.0.1:0", "--tcp", "127.0.0.1:0"]
            .map(String::from)
            .to_vec();
        all.extend(args.iter().map(|arg| (*arg).to_owned()));
        Self::spawn(all, Vec::new(), Some((soft, hard)))
    }

    fn spawn(args: Vec<String>, env: Vec<(String, String)>, nofile: Option<(u64, u64)>) -> Self {
        let mut command = match nofile {
            Some((soft, hard)) => {
                let mut command = Command::new("prlimit");
                command
                    .arg(format!("--nofile={soft}:{hard}"))
                    .arg("--")
                    .arg(binary("sessiond:sessiond"));
                command
            }
            None => Command::new(binary("sessiond:sessiond")),
        };
        command
            .args(&args)
            .env("SESSIOND_LOG", "info")
            .envs(env.iter().map(|(name, value)| (name, value)));
        let (process, addrs) = spawn_listening(command, &["HTTP API", "binary protocol"]);
        Self {
            process,
            args,
            env,
            nofile,
            http: addrs[0],
            tcp: addrs[1],
        }
    }

    /// `http://addr` of the HTTP API.
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Starts the same node again on the same addresses after a kill.
    pub fn restart(&mut self) {
        self.process.kill();
        let mut args = self.args.clone();
        let http = self.http.to_string();
        let tcp = self.tcp.to_string();
        for (flag, value) in [("--http", http), ("--tcp", tcp)] {
            if let Some(position) = args.iter().position(|arg| arg == flag) {
                args[position + 1] = value;
            }
        }
        *self = Self::spawn(args, std::mem::take(&mut self.env), self.nofile);
    }
}

impl std::ops::Deref for Sessiond {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for Sessiond {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// The resident memory of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line");
    kib * 1024
}

/// Sends a signal with the `kill` command (no unsafe code needed).
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status();
}

/// Stops `pid` (SIGSTOP) and waits, up to 2 s, until every one of its
/// threads is stopped: a thread stops only when it next runs, and one that
/// gets to answer a request first would make the freeze a lie.
pub fn freeze(pid: u32) {
    signal(pid, "STOP");
    let deadline = Instant::now() + Duration::from_secs(2);
    while !all_threads_stopped(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether every thread of `pid` is in state `T` (stopped).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name's closing parenthesis.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'))
        })
    })
}

/// Parses `... <what> listening local=<addr>` log lines (ANSI colours, if
/// any, removed first).
fn listening_addr(line: &str) -> Option<(String, SocketAddr)> {
    let line = strip_ansi(line);
    let (before, after) = line.split_once(" listening local=")?;
    let what = before.rsplit(": ").next()?.to_owned();
    let addr = after.split_whitespace().next()?.parse().ok()?;
    Some((what, addr))
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// A child process whose stderr lines are collected, started by
/// [`spawn_listening`]; killed (SIGKILL) and reaped when dropped.
pub struct Process {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stderr lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Its stderr so far, newline separated.
    pub fn log(&self) -> String {
        self.log_lines().join("\n")
    }

    /// Kills it with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (at most 15 s) for it to exit; returns its
    /// exit code, or `None` (after a SIGKILL) if it did not exit in time or
    /// died of a signal. Blocks the calling thread.
    pub fn terminate(&mut self) -> Option<i32> {
        self.terminate_within(Duration::from_secs(15))
    }

    /// [`terminate`](Self::terminate), waiting at most `limit`.
    pub fn terminate_within(&mut self, limit: Duration) -> Option<i32> {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `command` (stderr piped and collected) and waits (at most
/// [`START_TIMEOUT`]) until it has logged `<what> listening local=<addr>`
/// for every `what` in `wanted`; returns it with those addresses, in the
/// order asked. Panics with its log if it exits or times out first.
pub(crate) fn spawn_listening(mut command: Command, wanted: &[&str]) -> (Process, Vec<SocketAddr>) {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {description}: {err}"));
    let stderr = child.stderr.take().expect("piped stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = listening_addr(&line) {
                    let _ = tx.send(addr);
                }
                log.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
    }
    let deadline = Instant::now() + START_TIMEOUT;
    let mut found: Vec<Option<SocketAddr>> = vec![None; wanted.len()];
    while found.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((what, addr)) => {
                if let Some(index) = wanted.iter().position(|wanted| *wanted == what) {
                    found[index] = Some(addr);
                }
            }
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                // Let the reader thread collect the last lines.
                std::thread::sleep(Duration::from_millis(50));
                let log = log.lock().unwrap_or_else(|p| p.into_inner()).join("\n");
                panic!("{description} did not start listening ({err}):\n{log}");
            }
        }
    }
    (
        Process { child, log },
        found.into_iter().flatten().collect(),
    )
}
