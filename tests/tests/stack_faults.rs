//! The whole stack under faults, as users see it: 32 browsers with their own
//! cookie jars drive the balancer (visits and cart additions) while an app
//! is SIGKILLed, a store node is SIGKILLed and restarted, and then the other
//! store node is SIGKILLed. Ten runs; in every run every browser's visit
//! counter goes 1, 2, 3... with no value repeated or skipped, and its cart
//! holds exactly the items it added, in order.
//!
//! A browser retries a request that failed (a 5xx, or no answer) with the
//! same `X-Request-Id`, the way a careful client retries; the cart app
//! counts a request once per id, and sessiond applies each write once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sessiond_e2e::stack::{Stack, browser, send};

const RUNS: usize = 10;
const VISITORS: usize = 32;
/// Attempts of one request before a browser gives up.
const ATTEMPTS: usize = 40;

/// What one browser saw in a run.
#[derive(Debug, Default)]
struct Seen {
    /// Requests answered 200.
    answered: u64,
    /// Attempts that failed and were retried.
    retried: u64,
    /// (step, expected, shown): a visit counter that repeated or skipped.
    wrong_visits: Vec<(u64, u64, u64)>,
    /// (step, expected, shown): a cart that lost, doubled or reordered items.
    wrong_carts: Vec<(u64, Value, Value)>,
    /// A request that never succeeded.
    gave_up: Option<String>,
    /// (step, sid, app): the session cookie the browser was given first,
    /// and each time an answer set another, with the app that set it; a
    /// failed run names the browsers that shared one.
    sids: Vec<(u64, String, Option<String>)>,
}

/// One browser: visits, and every fifth step adds an item, until `stop`.
async fn browse(base: String, visitor: usize, stop: Arc<AtomicBool>) -> Seen {
    let browser = browser();
    let started = std::time::Instant::now();
    let mut seen = Seen::default();
    let (mut visits, mut cart) = (0u64, Vec::new());
    let mut step = 0u64;
    while !stop.load(Ordering::Relaxed) {
        step += 1;
        let adds = step.is_multiple_of(5);
        let item = format!("item-{step}");
        let request_id = format!("visitor-{visitor}-step-{step}");
        let mut answer = None;
        let mut last_failure = String::new();
        for _ in 0..ATTEMPTS {
            let request = if adds {
                browser.post(format!("{base}/cart/{item}"))
            } else {
                browser.get(format!("{base}/"))
            };
            match send(request.header("x-request-id", &request_id)).await {
                Ok(reply) if reply.status == 200 => {
                    let known = seen.sids.last().map(|(_, sid, _)| sid);
                    if let Some(sid) = reply.sid.filter(|sid| known != Some(sid)) {
                        seen.sids.push((step, sid, reply.served_by));
                    }
                    answer = Some(reply.body);
                    break;
                }
                failed => {
                    seen.retried += 1;
                    last_failure = match failed {
                        Ok(reply) => format!(
                            "{} from {:?}: {}",
                            reply.status, reply.served_by, reply.body
                        ),
                        Err(err) => err,
                    };
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let Some(body) = answer else {
            seen.gave_up = Some(format!(
                "step {step} ({request_id}): no answer after {ATTEMPTS} attempts, \
                 {:?} after the browser started; the last: {last_failure}",
                started.elapsed()
            ));
            return seen;
        };
        seen.answered += 1;
        if adds {
            cart.push(item);
            if body["cart"] != json!(cart) {
                seen.wrong_carts
                    .push((step, json!(cart), body["cart"].clone()));
            }
        } else {
            visits += 1;
            let shown = body["visits"].as_u64().unwrap_or(0);
            if shown != visits {
                seen.wrong_visits.push((step, visits, shown));
                visits = shown;
            }
        }
    }
    seen
}

/// One run: start the stack, browse, kill and restart, check. A failed
/// run prints every process's log, then answers what went wrong (short, so
/// that it ends the test's output).
async fn run_once(run: usize) -> Result<(), String> {
    let mut stack = Stack::start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let browsers: Vec<_> = (0..VISITORS)
        .map(|visitor| tokio::spawn(browse(stack.url(""), visitor, stop.clone())))
        .collect();
    let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));
    pause(700).await;
    stack.apps[1].kill();
    pause(700).await;
    stack.stores[0].kill();
    pause(700).await;
    stack.stores[0].restart();
    pause(1000).await;
    stack.stores[1].kill();
    pause(1000).await;
    stop.store(true, Ordering::Relaxed);
    let mut totals = (0, 0);
    let mut wrong = Vec::new();
    let mut sids = Vec::new();
    for (visitor, browser) in browsers.into_iter().enumerate() {
        let seen = tokio::time::timeout(Duration::from_secs(120), browser)
            .await
            .expect("a browser did not stop in time")
            .expect("a browser panicked");
        let fine = seen.gave_up.is_none()
            && seen.wrong_visits.is_empty()
            && seen.wrong_carts.is_empty()
            && seen.answered > 0;
        if !fine {
            wrong.push(format!("visitor {visitor}: {seen:?}"));
        }
        totals.0 += seen.answered;
        totals.1 += seen.retried;
        sids.extend(
            seen.sids
                .into_iter()
                .map(|(step, sid, _)| (sid, visitor, step)),
        );
    }
    if !wrong.is_empty() {
        eprintln!("{}", stack.logs());
        wrong.extend(shared_sessions(&sids));
        return Err(format!(
            "run {run}: {} of {VISITORS} browsers gave up, saw a repeated or skipped visit, \
             lost a cart item or got no answer:\n{}",
            wrong.len(),
            wrong.join("\n")
        ));
    }
    eprintln!(
        "run {run}: {VISITORS} browsers, {} requests answered, {} attempts retried, \
         0 repeated or skipped visits, 0 lost cart items",
        totals.0, totals.1
    );
    Ok(())
}

/// For a failed run: each session cookie that more than one browser was
/// given, with the browsers and the step at which each got it (from its
/// first step: two sessions made as one; later: a cookie delivered to the
/// wrong browser).
fn shared_sessions(sids: &[(String, usize, u64)]) -> Vec<String> {
    let mut by_sid: std::collections::BTreeMap<&str, Vec<(usize, u64)>> = Default::default();
    for (sid, visitor, step) in sids {
        by_sid.entry(sid).or_default().push((*visitor, *step));
    }
    by_sid
        .into_iter()
        .filter(|(_, holders)| holders.len() > 1)
        .map(|(sid, holders)| format!("sid {sid} given to (visitor, at step): {holders:?}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_see_every_visit_once_while_apps_and_store_nodes_die() -> Result<(), String> {
    for run in 0..RUNS {
        run_once(run).await?;
    }
    Ok(())
}
