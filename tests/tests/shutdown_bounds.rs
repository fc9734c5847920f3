//! Shutdown bounds under adverse clients and Redis states: what a SIGTERM
//! must end within, whatever a client or Redis does meanwhile.

use std::time::Duration;

use sessiond_e2e::redis_support::{http, wait_ready};
use sessiond_e2e::{Balancer, RedisServer, Sessiond, TestUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Runs `terminate` (SIGTERM, then a wait of at most 15 s) off the
/// runtime's threads and asserts a clean exit.
async fn stops_cleanly(
    terminate: impl FnOnce() -> (Option<i32>, String) + Send + 'static,
    drain_secs: u64,
) {
    let (code, log) = tokio::task::spawn_blocking(terminate)
        .await
        .expect("the terminating thread panicked");
    assert_eq!(
        code,
        Some(0),
        "not a clean exit within 15 s (drain timeout {drain_secs} s); log:\n{log}"
    );
}

/// A client that opened a connection to the balancer's admin listener and
/// sent only part of a request head (a stalled scraper, a half-open
/// connection) does not hold the balancer past its `--drain-timeout`:
/// SIGTERM ends it with exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_admin_request_does_not_hold_the_balancer_at_shutdown() {
    let upstream = TestUpstream::start("app-1").await;
    let mut balancer = Balancer::over(std::slice::from_ref(&upstream), &["--drain-timeout", "2s"]);
    let mut stalled = TcpStream::connect(balancer.admin)
        .await
        .expect("connect to the admin listener");
    stalled
        .write_all(b"GET /stats.json HTTP/1.1\r\nHost: admin\r\n")
        .await
        .expect("send part of a request head");
    // Let the balancer read what was sent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stops_cleanly(move || (balancer.terminate(), balancer.log()), 2).await;
    drop(stalled);
}

/// A loopback proxy to Redis whose connections stop carrying Redis's
/// answers once their client has sent `SUBSCRIBE` (and close nothing): a
/// Redis, or a path to it, that goes silent right after a subscriber's
/// connection handshake, before the subscription is confirmed.
async fn silent_after_subscribe(redis_port: u16) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local address").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(("127.0.0.1", redis_port)).await else {
                continue;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let (muted, mute) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                let mut buffer = vec![0; 64 << 10];
                while let Ok(read) = client_read.read(&mut buffer).await {
                    if read == 0 {
                        return;
                    }
                    let sent = &buffer[..read];
                    if sent
                        .windows(9)
                        .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
                    {
                        let _ = muted.send(true);
                    }
                    if server_write.write_all(sent).await.is_err() {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buffer = vec![0; 64 << 10];
                while let Ok(read) = server_read.read(&mut buffer).await {
                    if read == 0 {
                        // Never close the client's side: it stays half-open.
                        std::future::pending::<()>().await;
                    }
                    if *mute.borrow() {
                        continue;
                    }
                    if client_write.write_all(&buffer[..read]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A node whose invalidation subscription is waiting for Redis to confirm
/// `SUBSCRIBE` when it is told to stop (Redis went silent, or the path to
/// it half-open, right after the subscriber's handshake) still exits 0
/// within its documented bound (drain timeout, then at most 10 s more
/// while Redis is unreachable), not never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_subscribe_goes_unanswered_still_stops() {
    let redis = RedisServer::start();
    let proxy = silent_after_subscribe(redis.port).await;
    let http = http();
    let redis_url = format!("redis://127.0.0.1:{proxy}");
    let mut node = Sessiond::start(&["--redis", &redis_url, "--drain-timeout", "1s"]);
    // The link (commands) works through the proxy; only the subscription
    // waits for its confirmation.
    wait_ready(&http, &node).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stops_cleanly(move || (node.terminate(), node.log()), 1).await;
}

/// A balancer whose access log is a pipe nobody reads any more (a stalled
/// log shipper: "a stalled disk or pipe never stalls a worker") still
/// exits 0 within its drain timeout at SIGTERM: the lines it cannot write
/// are lost, not the shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_access_log_pipe_does_not_hold_the_balancer_at_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("access.log");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    // Held open (read and write: opening does not wait for a writer) and
    // never read: the pipe fills at 64 KiB.
    let _stalled_reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .expect("open the pipe");
    let upstream = TestUpstream::start("app-1").await;
    let fifo_path = fifo.to_str().expect("a UTF-8 path").to_owned();
    let mut balancer = Balancer::over(
        std::slice::from_ref(&upstream),
        &["--drain-timeout", "2s", "--access-log", &fifo_path],
    );
    balancer
        .wait_until_healthy(1, Duration::from_secs(15))
        .await;
    let client = sessiond_e2e::http_client(Duration::from_secs(10));
    let target = format!("{}/app?padding={}", balancer.url(), "x".repeat(200));
    for n in 0..1_500 {
        let answer = client.get(&target).send().await.expect("a request");
        assert_eq!(answer.status(), 200, "request {n}: {}", balancer.log());
        answer.bytes().await.expect("a body");
    }
    // Several ticks of the log's writer: it has filled the pipe by now.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    stops_cleanly(move || (balancer.terminate(), balancer.log()), 2).await;
}
