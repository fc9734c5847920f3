//! The Rust client's memory after a large session: its own test binary, so
//! no other test's allocations move the process's resident size while it
//! measures.

use std::time::Duration;

use sessiond_e2e::process::rss_bytes;
use sessiond_e2e::{Sessiond, client_for};

/// Bound of any single step that talks to the server.
const STEP: Duration = Duration::from_secs(60);

/// The test process's resident set size, in bytes.
fn resident_bytes() -> usize {
    rss_bytes(std::process::id()) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gives_back_the_room_a_large_session_took() {
    // Sizes over glibc's largest mmap threshold (32 MiB), so the test's own
    // copies go back to the system when dropped.
    const DATA_BYTES: usize = 48 << 20;
    let node = Sessiond::start(&["--max-session-bytes", "50MiB", "--max-memory", "512MiB"]);
    let client = client_for(&[&node]).await;
    let small = tokio::time::timeout(STEP, client.create(&"warm", None))
        .await
        .expect("in time")
        .expect("create a small session");
    let before = resident_bytes();

    let large = "x".repeat(DATA_BYTES);
    let id = tokio::time::timeout(STEP, client.create(&large, None))
        .await
        .expect("in time")
        .expect("create the large session")
        .id;
    drop(large);
    let read = tokio::time::timeout(STEP, client.get::<String>(&id))
        .await
        .expect("in time")
        .expect("read the large session");
    assert_eq!(read.data.len(), DATA_BYTES);
    drop(read);
    // A small round trip after the large ones, on the same connection.
    let again = tokio::time::timeout(STEP, client.get::<String>(&small.id))
        .await
        .expect("in time")
        .expect("read the small session");
    assert_eq!(again.data, "warm");

    let grown = resident_bytes().saturating_sub(before);
    assert!(
        grown < DATA_BYTES / 2,
        "the process kept {} MiB after the large session's write and read were done",
        grown >> 20
    );
}
