//! TLS at the front of `sessiond balance`: certificates from a CA made in
//! the test, HTTP/2 and HTTP/1.1 clients (curl) chosen by ALPN, upstreams
//! still spoken to in HTTP/1.1 with `X-Forwarded-Proto: https`, and a
//! SIGHUP that swaps the certificate while a connection stays open.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use sessiond_e2e::certs::TestCa;
use sessiond_e2e::upstream::echoed_header;
use sessiond_e2e::{Balancer, TestUpstream, process::signal};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const STEADY: [&str; 6] = ["--health-interval", "1s", "--rise", "1", "--fall", "3"];
const WAIT: Duration = Duration::from_secs(15);

fn tls_balancer(upstream: &TestUpstream, cert: &Path, key: &Path) -> Balancer {
    tls_balancer_with(upstream, cert, key, &STEADY)
}

/// A TLS balancer over `upstream` with `cert` and `key`, plus `extra`.
fn tls_balancer_with(upstream: &TestUpstream, cert: &Path, key: &Path, extra: &[&str]) -> Balancer {
    let url = upstream.url();
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let mut args = vec![
        "--upstream",
        url.as_str(),
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    args.extend(extra);
    Balancer::start(&args)
}

/// `curl <flag> https://localhost:<port><path>` trusting `ca`: the body
/// and the HTTP version curl used.
async fn curl(ca: &Path, port: u16, flag: &'static str, path: &str) -> (Vec<u8>, String) {
    let (ca, path) = (ca.to_string_lossy().into_owned(), path.to_owned());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "20", flag, "--cacert", &ca])
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(["-w", "\n%{http_version}"])
            .arg(format!("https://localhost:{port}{path}"))
            .output()
            .expect("curl is needed (scripts/install-test-deps.sh installs it)")
    })
    .await
    .expect("curl");
    assert!(output.status.success(), "{output:?}");
    let stdout = output.stdout;
    let newline = stdout
        .iter()
        .rposition(|byte| *byte == b'\n')
        .expect("a version line");
    let version = String::from_utf8_lossy(&stdout[newline + 1..]).into_owned();
    (stdout[..newline].to_vec(), version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_clients_get_http2_or_http1_1_and_upstreams_see_https() {
    let upstream = TestUpstream::start("app").await;
    let ca = TestCa::new();
    let (cert, key) = ca.issue("one");
    let balancer = tls_balancer(&upstream, &cert, &key);
    let port = balancer.listen.port();
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let (body, used) = curl(ca.cert(), port, flag, "/headers?q=1").await;
        let echo: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(used, version, "{echo}");
        assert_eq!(echo["version"], "HTTP/1.1", "upstreams stay HTTP/1.1");
        assert_eq!(echo["path"], "/headers?q=1");
        let header = |name: &str| echoed_header(&echo, name);
        assert_eq!(header("x-forwarded-proto"), ["https"], "{echo}");
        assert_eq!(
            header("host"),
            [format!("localhost:{port}").as_str()],
            "{echo}"
        );
        assert_eq!(header("x-forwarded-for"), ["127.0.0.1"], "{echo}");
    }
    // A big body over HTTP/2 arrives whole.
    let (body, used) = curl(ca.cert(), port, "--http2", "/big/2").await;
    assert_eq!((body.len(), used.as_str()), (2 << 20, "2"));
    assert!(body == sessiond_e2e::upstream::pattern_bytes(2 << 20));
    assert_eq!(upstream.hits("/headers"), 2);
}

/// A TLS connection to the balancer trusting `ca`, with ALPN http/1.1.
async fn connect(balancer: &Balancer, ca: &Path) -> TlsStream<TcpStream> {
    connect_with(balancer, ca, b"http/1.1").await
}

/// A TLS connection to the balancer trusting `ca`, offering `alpn`.
async fn connect_with(balancer: &Balancer, ca: &Path, alpn: &[u8]) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA cert")).expect("add the CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(balancer.listen).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(
        WAIT,
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake")
}

/// The leaf certificate the server presented.
fn served(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("certificates")[0]
        .to_vec()
}

fn leaf(path: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .expect("cert file")
        .next()
        .expect("a certificate")
        .expect("PEM")
        .to_vec()
}

async fn get(sender: &mut hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>) -> String {
    let request = hyper::Request::get("/")
        .header("host", "localhost")
        .body(Empty::new())
        .expect("request");
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("an answer in time")
        .expect("an answer on the open connection");
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.expect("body");
    String::from_utf8_lossy(&body.to_bytes()).into_owned()
}

async fn wait_for_log(balancer: &Balancer, line: &str, count: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while balancer.log().matches(line).count() < count {
        assert!(tokio::time::Instant::now() < deadline, "{}", balancer.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_while_an_open_connection_stays() {
    let upstream = TestUpstream::start("app").await;
    let ca = TestCa::new();
    let (one, one_key) = ca.issue("one");
    let (two, two_key) = ca.issue("two");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(&one, &cert).expect("copy");
    std::fs::copy(&one_key, &key).expect("copy");
    let balancer = tls_balancer(&upstream, &cert, &key);

    let stream = connect(&balancer, ca.cert()).await;
    assert_eq!(served(&stream), leaf(&one));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    let driver = tokio::spawn(connection);
    assert_eq!(get(&mut sender).await, "app");

    std::fs::copy(&two, &cert).expect("copy");
    std::fs::copy(&two_key, &key).expect("copy");
    signal(balancer.pid(), "HUP");
    wait_for_log(&balancer, "TLS certificate reloaded", 1).await;
    // The open connection goes on; new ones get the new certificate.
    assert_eq!(get(&mut sender).await, "app");
    let fresh = connect(&balancer, ca.cert()).await;
    assert_eq!(served(&fresh), leaf(&two));

    // A broken key is refused and the served certificate stays.
    std::fs::write(&key, "not a key").expect("write");
    signal(balancer.pid(), "HUP");
    wait_for_log(&balancer, "keeping the old TLS certificate", 1).await;
    assert_eq!(served(&connect(&balancer, ca.cert()).await), leaf(&two));
    assert_eq!(get(&mut sender).await, "app");
    driver.abort();
}

/// `key` of a YAML mapping.
fn at<'a>(yaml: &'a yaml_rust2::Yaml, key: &str) -> &'a yaml_rust2::Yaml {
    &yaml[key]
}

#[test]
fn the_compose_tls_override_makes_a_valid_tls_configuration() {
    use yaml_rust2::YamlLoader;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let load = |name: &str| {
        let text = std::fs::read_to_string(root.join(name)).expect("compose file");
        YamlLoader::load_from_str(&text).expect("YAML").remove(0)
    };
    let (base, tls) = (load("docker-compose.yml"), load("docker-compose.tls.yml"));
    let balancer = at(at(&base, "services"), "balancer");
    let words: Vec<String> = at(balancer, "command")
        .as_vec()
        .expect("a command list")
        .iter()
        .filter_map(|word| word.as_str().map(str::to_owned))
        .collect();
    assert_eq!(&words[..2], ["sessiond", "balance"]);
    let env = at(at(at(&tls, "services"), "balancer"), "environment");
    let var = |name: &str| at(env, name).as_str().expect("a value").to_owned();
    let output = Command::new(sessiond_e2e::binary("sessiond:sessiond"))
        .args(&words[1..])
        .arg("--check-config")
        .env("SESSIOND_TLS_CERT", var("SESSIOND_TLS_CERT"))
        .env("SESSIOND_TLS_KEY", var("SESSIOND_TLS_KEY"))
        .env_remove("SESSIOND_UPSTREAMS")
        .output()
        .expect("run sessiond");
    // `--check-config` reads the files, which only the container has: the
    // check reaching them shows the override's variables are the ones the
    // balancer reads (a key variable it did not read would have failed
    // first: a certificate requires a key), and the rest of the command
    // passed.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{output:?}");
    assert!(
        stderr.starts_with("Error: cannot read /certs/cert.pem:"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed_but_busy_ones_are_not() {
    let upstream = TestUpstream::start("app").await;
    let ca = TestCa::new();
    let extra = ["--header-timeout", "300ms", "--health-interval", "1h"];
    let (cert, key) = ca.issue("one");
    let balancer = tls_balancer_with(&upstream, &cert, &key, &extra);

    // TLS with h2 agreed, then not a byte of the HTTP/2 preface.
    let mut silent = connect_with(&balancer, ca.cert(), b"h2").await;
    assert_eq!(silent.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // (The server's own SETTINGS frame may come first.)
    let mut chunk = [0u8; 1024];
    let closed = async {
        while let Ok(read) = silent.read(&mut chunk).await {
            if read == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(WAIT, closed)
        .await
        .expect("the silent connection was never closed");

    // A real HTTP/2 client: a request that outlasts several idle periods
    // is answered; once idle, the connection ends.
    let (mut sender, driver) = http2_to(&balancer, ca.cert()).await;
    let request = hyper::Request::get("https://localhost/slow/1500")
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    let (status, body) = answer_of(&mut sender, request).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"slow app");
    tokio::time::timeout(WAIT, driver)
        .await
        .expect("the idle HTTP/2 connection was never closed")
        .expect("the connection task")
        .expect("a clean close (GOAWAY)");
}

/// A TLS balancer over `upstream` (with `extra` flags, a look every
/// 500 ms), and the head (a 200) of a `GET path` through it from an HTTP/2
/// client whose stream window is `window` bytes, with the task driving
/// that client's connection.
async fn windowed_http2_get(
    upstream: &TestUpstream,
    ca: &TestCa,
    extra: &[&str],
    window: u32,
    path: &str,
) -> (
    Balancer,
    hyper::Response<hyper::body::Incoming>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let mut args = vec!["--header-timeout", "500ms", "--health-interval", "1h"];
    args.extend(extra);
    let (cert, key) = ca.issue("one");
    let balancer = tls_balancer_with(upstream, &cert, &key, &args);
    let tls = connect_with(&balancer, ca.cert(), b"h2").await;
    let (mut sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(window)
            .initial_connection_window_size(window.max(65_535))
            .handshake(TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(format!("https://localhost{path}"))
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("the head in time")
        .expect("a response");
    assert_eq!(response.status(), 200);
    (balancer, response, driver)
}

/// An HTTP/2 client that grants no flow-control window takes no response
/// data (the socket never blocks, so the socket's send timeout never
/// fires): its stream is ended once its body has waited `--send-timeout`
/// to be asked for, which frees the upstream's only slot for another
/// client. It held the slot for as long as the client stayed, so with
/// `--max-conns 1` every other client got 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_takes_no_data_frees_its_upstream_after_the_send_timeout() {
    let upstream = TestUpstream::start("app").await;
    let ca = TestCa::new();
    let (balancer, response, driver) = windowed_http2_get(
        &upstream,
        &ca,
        &["--max-conns", "1", "--send-timeout", "1s"],
        0,
        "/headers",
    )
    .await;
    balancer
        .wait_for_stats("the stalled stream's slot freed", WAIT, |stats| {
            stats["upstreams"][0]["in_flight"] == 0
        })
        .await;
    // The slot serves another client.
    let (body, _) = curl(ca.cert(), balancer.listen.port(), "--http1.1", "/").await;
    assert_eq!(body, b"app");
    drop(response);
    driver.abort();
}

/// An HTTP/2 client that reads a large answer slowly but steadily (16 KiB
/// a second, the protocol's default 64 KiB windows) is not taken for one
/// that reads nothing: its body goes to hyper 16 KiB at a time, so hyper
/// asks for more as soon as the client took that much. With the body
/// handed over in the upstream's 64 KiB chunks, hyper asked again only
/// after the client took most of a chunk past its window, and the stream
/// was ended after --send-timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_http2_reader_is_not_cut_by_the_send_timeout() {
    use http_body_util::BodyExt;
    let upstream = TestUpstream::start("app").await;
    let ca = TestCa::new();
    let extra = ["--send-timeout", "2s"];
    let (_balancer, response, driver) =
        windowed_http2_get(&upstream, &ca, &extra, 65_535, "/big/1").await;
    let mut body = response.into_body();
    let mut read = 0usize;
    let reading = std::time::Instant::now();
    while reading.elapsed() < Duration::from_secs(10) {
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("a frame in time")
            .expect("more of the body")
            .unwrap_or_else(|err| panic!("cut after {read} bytes: {err}"));
        if let Ok(data) = frame.into_data() {
            read += data.len();
        }
        // About 16 KiB a second: HTTP/2 frames carry 16 KiB at most.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(read >= 64 * 1024, "{read} bytes in 10 s");
    driver.abort();
}

/// An HTTP/2 client's cookies, sent as several fields (as browsers do),
/// reach the HTTP/1.1 upstream as one `Cookie` header joined by "; ". They
/// were forwarded as several `Cookie` headers, of which many frameworks
/// read only the first: the session cookie could be missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cookie_fields_reach_the_upstream_as_one_header() {
    let upstream = TestUpstream::start("app").await;
    let ca = TestCa::new();
    let (cert, key) = ca.issue("one");
    let balancer = tls_balancer(&upstream, &cert, &key);
    let (mut sender, driver) = http2_to(&balancer, ca.cert()).await;
    let request = hyper::Request::get("https://localhost/headers")
        .header("cookie", "theme=dark")
        .header("cookie", "sid=abc")
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    let (status, body) = answer_of(&mut sender, request).await;
    assert_eq!(status, 200);
    let echo: Value = serde_json::from_slice(&body).expect("a JSON echo");
    assert_eq!(echoed_header(&echo, "cookie"), ["theme=dark; sid=abc"]);
    driver.abort();
}

/// An HTTP/2 connection over TLS to `balancer`, trusting `ca`: its sender,
/// and the task driving it.
async fn http2_to(
    balancer: &Balancer,
    ca: &Path,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let tls = connect_with(balancer, ca, b"h2").await;
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .expect("HTTP/2 handshake");
    (sender, tokio::spawn(connection))
}

/// The status and whole body of `request`'s answer on an HTTP/2
/// connection (bounded).
async fn answer_of(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<bytes::Bytes>>,
    request: hyper::Request<Empty<bytes::Bytes>>,
) -> (u16, bytes::Bytes) {
    let answered = async {
        let response = sender.send_request(request).await.expect("an answer");
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.expect("body");
        (status, body.to_bytes())
    };
    tokio::time::timeout(WAIT, answered)
        .await
        .expect("an answer in time")
}

/// `--check-config` reads the certificate and key as the real start does:
/// a missing or mismatched file fails the check (it said "configuration
/// ok", and the start then failed), a good pair passes.
#[test]
fn check_config_reads_the_certificate_and_key() {
    let ca = TestCa::new();
    let (cert, key) = ca.issue("localhost");
    let (other, _) = ca.issue("other");
    let check = |cert: &Path, key: &Path| {
        let output = Command::new(sessiond_e2e::binary("sessiond:sessiond"))
            .args([
                "balance",
                "--upstream",
                "http://127.0.0.1:1",
                "--check-config",
            ])
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .env_remove("SESSIOND_UPSTREAMS")
            .env_remove("SESSIOND_UPSTREAMS_FILE")
            .output()
            .expect("run sessiond balance --check-config");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.code(), text)
    };
    let (code, text) = check(&cert, &key);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("configuration ok"), "{text}");
    let missing = Path::new("/nonexistent/cert.pem");
    for (cert, key, what) in [
        (missing, key.as_path(), "cannot read"),
        (other.as_path(), key.as_path(), "does not fit"),
    ] {
        let (code, text) = check(cert, key);
        assert_ne!(code, Some(0), "{cert:?}: {text}");
        assert!(!text.contains("configuration ok"), "{text}");
        assert!(text.contains(what), "{cert:?}: expected {what:?} in {text}");
    }
}
