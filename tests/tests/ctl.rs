//! `sessiond ctl` end to end: the real binary against a real node with a
//! token, its output in both formats, and its exit codes (0 found, 1 not
//! found, 2 error).

use std::process::{Command, Output};

use serde_json::{Value, json};
use sessiond_e2e::{Sessiond, binary, build, builder_for};

const TOKEN: &str = "ctl-test-token";

/// Runs `sessiond ctl --node <node> args...` with `token` in the
/// environment.
fn ctl(node: &Sessiond, token: Option<&str>, args: &[&str]) -> Output {
    ctl_at(&node.tcp.to_string(), token, args)
}

fn ctl_at(address: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(binary("sessiond:sessiond"));
    command
        .arg("ctl")
        .args(["--node", address, "--timeout", "5s"])
        .args(args)
        .env_remove("SESSIOND_AUTH_TOKEN")
        .env_remove("SESSIOND_LOG");
    if let Some(token) = token {
        command.env("SESSIOND_AUTH_TOKEN", token);
    }
    command.output().expect("cannot run sessiond ctl")
}

/// The exit code and stdout of a `ctl` run with the right token.
fn run(node: &Sessiond, args: &[&str]) -> (i32, String) {
    let output = ctl(node, Some(TOKEN), args);
    (
        output.status.code().expect("ctl exited"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// The JSON document a `--json` run printed, with its exit code.
fn run_json(node: &Sessiond, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, stdout) = run(node, &all);
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|err| panic!("{args:?} printed {stdout:?}: {err}"));
    (code, json)
}

#[tokio::test]
async fn ctl_reads_lists_revokes_and_deletes_with_meaningful_exit_codes() {
    let node = Sessiond::start(&["--auth-token", TOKEN]);
    let client = build(builder_for(&[&node]).auth_token(TOKEN)).await;
    let cart = json!({"cart": ["apple"]});
    let phone = client
        .create_for_user(&cart, None, "carol@example.com")
        .await
        .expect("create");
    let laptop = client
        .create_for_user(&json!({}), None, "carol@example.com")
        .await
        .expect("create");
    let (phone_id, laptop_id) = (phone.id.to_string(), laptop.id.to_string());

    // get: text and JSON.
    let (code, text) = run(&node, &["get", &phone_id]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&format!("id:          {phone_id}")), "{text}");
    assert!(text.contains("user:        carol@example.com"), "{text}");
    assert!(
        text.contains(r#"data:        {"cart":["apple"]}"#),
        "{text}"
    );
    let (code, session) = run_json(&node, &["get", &phone_id]);
    assert_eq!(code, 0);
    assert_eq!(session["id"], phone_id.as_str());
    assert_eq!(session["version"], 1);
    assert_eq!(session["user"], "carol@example.com");
    assert_eq!(session["data"], cart);
    assert_eq!(session["ttl_secs"], 1800);

    // stats: the node's counters.
    let (code, stats) = run_json(&node, &["stats"]);
    assert_eq!(code, 0);
    assert_eq!(stats["sessions"], 2);
    assert_eq!(stats["user_index_users"], 1);
    assert_eq!(stats["bytes_limit"], 1u64 << 30);
    assert!(stats["bytes_used"].as_u64().unwrap_or(0) > 0);
    let (code, text) = run(&node, &["stats"]);
    assert_eq!(code, 0);
    assert!(text.contains("sessions:    2"), "{text}");

    // list-user: both sessions.
    let (code, listing) = run_json(&node, &["list-user", "carol@example.com"]);
    assert_eq!(code, 0);
    let mut ids: Vec<&str> = listing["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|session| session["id"].as_str())
        .collect();
    // Oldest first, ties (the same millisecond) by id: compare as sets.
    ids.sort_unstable();
    let mut created = [phone_id.as_str(), laptop_id.as_str()];
    created.sort_unstable();
    assert_eq!(ids, created);
    let (code, text) = run(&node, &["list-user", "carol@example.com"]);
    assert_eq!(code, 0);
    assert_eq!(text.lines().count(), 3, "a header and two sessions: {text}");
    let (code, listing) = run_json(&node, &["list-user", "nobody"]);
    assert_eq!((code, listing["sessions"].clone()), (1, json!([])));

    // revoke-user --except keeps the one session.
    let (code, revoked) = run_json(
        &node,
        &["revoke-user", "carol@example.com", "--except", &laptop_id],
    );
    assert_eq!((code, revoked["revoked"].clone()), (0, json!(1)));
    assert_eq!(run(&node, &["get", &phone_id]).0, 1, "revoked");
    assert_eq!(run(&node, &["get", &laptop_id]).0, 0, "kept");
    let (code, text) = run(&node, &["revoke-user", "nobody"]);
    assert_eq!((code, text.trim()), (1, "revoked 0 session(s) of nobody"));

    // delete: 0 when it was there, 1 after.
    let (code, deleted) = run_json(&node, &["delete", &laptop_id]);
    assert_eq!((code, deleted["deleted"].clone()), (0, json!(true)));
    let (code, gone) = run_json(&node, &["delete", &laptop_id]);
    assert_eq!((code, gone["found"].clone()), (1, json!(false)));
    let (code, text) = run(&node, &["get", &laptop_id]);
    assert_eq!(
        (code, text.as_str()),
        (1, ""),
        "not found prints nothing on stdout"
    );
}

#[tokio::test]
async fn ctl_errors_exit_2_with_a_reason() {
    let node = Sessiond::start(&["--auth-token", TOKEN]);
    let id = "AAAAAAAAAAAAAAAAAAAAAA";
    let stderr = |output: &Output| String::from_utf8_lossy(&output.stderr).into_owned();

    let no_token = ctl(&node, None, &["get", id]);
    assert_eq!(no_token.status.code(), Some(2));
    assert!(
        stderr(&no_token).contains("unauthorized"),
        "{}",
        stderr(&no_token)
    );

    let wrong_token = ctl(&node, Some("wrong"), &["stats"]);
    assert_eq!(wrong_token.status.code(), Some(2));
    assert!(stderr(&wrong_token).contains("unauthorized"));

    let bad_id = ctl(&node, Some(TOKEN), &["get", "not-an-id"]);
    assert_eq!(bad_id.status.code(), Some(2));
    assert!(stderr(&bad_id).contains("is not a session id"));

    let usage = ctl(&node, Some(TOKEN), &["frobnicate"]);
    assert_eq!(usage.status.code(), Some(2), "clap's usage errors");

    // A node that is not there: a port nothing listens on once freed.
    let freed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let unreachable = ctl_at(&freed.to_string(), Some(TOKEN), &["stats"]);
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(
        stderr(&unreachable).contains("unavailable"),
        "{}",
        stderr(&unreachable)
    );
}

/// `ctl get` shows the data as stored, byte for byte, as the HTTP API and
/// the binary protocol return it: it printed it through a JSON value,
/// which sorted its keys, rounded a large number and wrote `-0` as `-0.0`.
#[tokio::test]
async fn ctl_get_shows_the_data_as_stored() {
    let node = Sessiond::start(&["--auth-token", TOKEN]);
    let data = r#"{"z": 1, "a": 12345678901234567890123, "m": -0, "f": 1.0}"#;
    let created = sessiond_e2e::http_client(std::time::Duration::from_secs(10))
        .post(format!("{}/v1/sessions", node.url()))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(format!(r#"{{"data": {data}}}"#))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.expect("JSON")["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    let (code, text) = run(&node, &["get", &id]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&format!("data:        {data}\n")), "{text}");
    let (code, json) = run(&node, &["--json", "get", &id]);
    assert_eq!(code, 0, "{json}");
    assert!(
        json.trim_end().ends_with(&format!(r#""data":{data}}}"#)),
        "{json}"
    );
    let parsed: Value = serde_json::from_str(&json).expect("one JSON document");
    assert_eq!(parsed["id"], id.as_str());
}

/// Output cut short by its reader (`sessiond ctl stats | head -1`) ends
/// `ctl` with its usual exit code and no panic (it panicked on the broken
/// pipe, exit code 101, with a backtrace).
#[tokio::test]
async fn a_reader_that_goes_away_is_no_error() {
    let node = Sessiond::start(&["--auth-token", TOKEN]);
    let mut child = Command::new(binary("sessiond:sessiond"))
        .arg("ctl")
        .args(["--node", &node.tcp.to_string(), "--timeout", "5s", "stats"])
        .env("SESSIOND_AUTH_TOKEN", TOKEN)
        .env_remove("SESSIOND_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot run sessiond ctl");
    // The reader goes away before a line is written.
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("ctl exits");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
