//! What the documentation shows, run against a real node: every command of
//! the README's HTTP API block, extracted from README.md and run in order
//! with `bash` and `curl` (so the README cannot drift from the server), and
//! the Python client example in `examples/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sessiond_e2e::Sessiond;

/// The workspace's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_path_buf()
}

/// The first `sh` block after the README's `## HTTP API v1` heading.
fn http_api_block() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let section = readme
        .split_once("\n## HTTP API v1\n")
        .expect("the README has an HTTP API v1 section")
        .1;
    let block = section
        .split_once("```sh\n")
        .expect("the section has a sh block")
        .1;
    block
        .split_once("\n```")
        .expect("the sh block ends")
        .0
        .to_owned()
}

/// One step of the block.
#[derive(Debug)]
enum Step {
    /// A `curl` command and what its comments say about it.
    Command { command: String, says: String },
    /// `NAME=...`: the variable takes the id of the previous answer.
    Assign(String),
}

/// The block's steps. A command's comment is the one on its last line, or
/// else the comment lines just above it; `S=` is the node's URL.
fn steps(block: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut above: Vec<&str> = Vec::new();
    let mut lines = block.lines();
    while let Some(line) = lines.next() {
        let line = line.trim_end();
        if line.is_empty() {
            above.clear();
        } else if let Some(comment) = line.strip_prefix('#') {
            above.push(comment);
        } else if let Some((name, _)) = line.split_once('=')
            && name.chars().all(|c| c.is_ascii_uppercase())
        {
            if name != "S" {
                steps.push(Step::Assign(name.to_owned()));
            }
            above.clear();
        } else {
            assert!(line.starts_with("curl "), "not a curl command: {line}");
            let mut command = line.to_owned();
            while command.ends_with('\\') {
                command.push('\n');
                command.push_str(lines.next().expect("a continued line"));
            }
            let (command, trailing) = match command.rsplit_once("  # ") {
                Some((command, comment)) => (command.trim_end().to_owned(), comment.to_owned()),
                None => (command, String::new()),
            };
            let says = if trailing.is_empty() {
                above.join(" ")
            } else {
                trailing
            };
            steps.push(Step::Command { command, says });
            above.clear();
        }
    }
    steps
}

/// The first HTTP status (a three-digit number from 100 to 599) in `text`.
fn status_named(text: &str) -> Option<u16> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|word| word.len() == 3)
        .filter_map(|word| word.parse().ok())
        .find(|status| (100..600).contains(status))
}

/// The number after `key` in `text` (`version 2`, `"revoked": 1`).
fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = text.split_once(key)?.1.trim_start_matches([':', ' ']);
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// What one command printed and answered.
struct Ran {
    status: u16,
    headers: String,
    stdout: String,
    json: Value,
}

/// Runs `command` with `bash`, its `curl` recording the response head.
fn run(command: &str, vars: &[(String, String)], dir: &Path) -> Ran {
    let head = dir.join("head");
    let script = format!(
        "curl() {{ command curl --max-time 10 --show-error --dump-header {} \"$@\"; }}\n{command}",
        head.display()
    );
    let output = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(&script)
        .envs(vars.iter().map(|(name, value)| (name, value)))
        .output()
        .expect("cannot run bash");
    assert!(
        output.status.success(),
        "{command}\nfailed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let headers = std::fs::read_to_string(&head).expect("curl wrote the response head");
    let status = headers
        .lines()
        .rev()
        .filter(|line| line.starts_with("HTTP/"))
        .find_map(|line| line.split(' ').nth(1)?.parse().ok())
        .expect("a status line");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    // With -i the head comes first.
    let body = match stdout.strip_prefix("HTTP/") {
        Some(_) => stdout.split_once("\r\n\r\n").map_or("", |(_, body)| body),
        None => &stdout,
    };
    Ran {
        status,
        headers,
        json: serde_json::from_str(body).unwrap_or(Value::Null),
        stdout,
    }
}

/// Checks the body's shape by what the command asked for.
fn check_shape(command: &str, says: &str, ran: &Ran) {
    let header = |name: &str| {
        ran.headers.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    if command.contains("/healthz") {
        assert_eq!(ran.stdout, "ok\n");
    } else if command.contains("/readyz") {
        assert_eq!(ran.stdout, "ready\n");
    } else if command.contains("/metrics") {
        assert!(ran.stdout.contains("sessiond_http_requests_total"));
    } else if command.contains("/v1/users/") && command.contains("DELETE") {
        let revoked = ran.json["revoked"].as_u64().expect("a revocation count");
        if let Some(expected) = number_after(says, "\"revoked\"") {
            assert_eq!(revoked, expected, "{command}");
        }
    } else if command.contains("/v1/users/") {
        assert!(ran.json["user"].is_string(), "{command}: {}", ran.json);
        assert!(ran.json["sessions"].is_array(), "{command}: {}", ran.json);
    } else if command.contains("/v1/events") {
        assert!(ran.json["events"].is_array(), "{command}: {}", ran.json);
        assert!(ran.json["next"].is_string(), "{command}: {}", ran.json);
    } else if command.contains("DELETE") {
        assert_eq!(ran.stdout, "204\n", "the command prints the status");
    } else {
        let session = &ran.json;
        assert_eq!(
            session["id"].as_str().map(str::len),
            Some(22),
            "{command}: {session}"
        );
        for field in ["created_at", "updated_at", "expires_at"] {
            assert!(session[field].is_string(), "{command}: {field}");
        }
        assert!(session["ttl_secs"].is_u64() && session.get("data").is_some());
        let version = session["version"].as_u64().expect("a version");
        assert_eq!(
            header("etag"),
            Some(format!("\"{version}\"")),
            "the ETag is the version"
        );
        if let Some(expected) = number_after(says, "version") {
            assert_eq!(version, expected, "{command}");
        }
        if let Some(user) = says.split_once("\"user\":\"").map(|(_, rest)| rest) {
            let user = user.split('"').next().unwrap_or_default();
            assert_eq!(session["user"], user, "{command}");
        }
        if ran.status == 201 {
            assert_eq!(
                header("location"),
                Some(format!(
                    "/v1/sessions/{}",
                    session["id"].as_str().unwrap_or("")
                ))
            );
        }
    }
}

#[test]
fn every_readme_http_example_answers_as_its_comment_says() {
    let node = Sessiond::start(&[]);
    let dir = tempfile::tempdir().expect("a temp dir");
    let steps = steps(&http_api_block());
    let mut vars = vec![("S".to_owned(), node.url())];
    let mut last: Option<Ran> = None;
    let mut commands = 0;
    for step in &steps {
        match step {
            Step::Assign(name) => {
                let id = last
                    .as_ref()
                    .and_then(|ran| ran.json["id"].as_str())
                    .unwrap_or_else(|| panic!("{name}= follows an answer without an id"));
                vars.retain(|(var, _)| var != name);
                vars.push((name.clone(), id.to_owned()));
            }
            Step::Command { command, says } => {
                let expected = status_named(says)
                    .unwrap_or_else(|| panic!("the comment of `{command}` names no status"));
                let ran = run(command, &vars, dir.path());
                assert_eq!(ran.status, expected, "{command}\n{}", ran.stdout);
                check_shape(command, says, &ran);
                last = Some(ran);
                commands += 1;
            }
        }
    }
    // create, read, put, patch, touch, rotate, delete, 3 user creates and
    // rotations, list, revoke, health, readiness, metrics
    assert!(commands >= 15, "only {commands} commands found: {steps:?}");
}

#[test]
fn the_python_client_example_creates_reads_updates_with_a_retry_and_rotates() {
    let token = "python-example-token";
    let node = Sessiond::start(&["--auth-token", token]);
    let output = Command::new("python3")
        .arg(root().join("examples/python_client.py"))
        .args(["--url", &node.url(), "--token", token])
        .output()
        .expect("cannot run python3");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let steps: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON line per step"))
        .collect();
    let step = |name: &str| {
        steps
            .iter()
            .find(|step| step["step"] == name)
            .unwrap_or_else(|| panic!("no {name} step in {steps:?}"))
    };
    assert_eq!(step("create")["version"], 1);
    assert_eq!(step("read")["data"], serde_json::json!({"cart": []}));
    let update = step("update");
    assert_eq!(update["attempts"], 2, "the first attempt met a 412");
    assert_eq!(
        update["data"],
        serde_json::json!({"cart": ["pear", "apple"]})
    );
    assert_eq!(update["version"], 3);
    let rotate = step("rotate");
    assert_ne!(rotate["id"], step("create")["id"]);
    assert_eq!(rotate["user"], "alice@example.com");
    assert_eq!(rotate["old_id_found"], false);
    assert_eq!(step("delete")["found"], false);
}
