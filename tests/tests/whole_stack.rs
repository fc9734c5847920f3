//! The whole stack of the docker-compose file as local processes: Redis
//! (AOF on) <- two `sessiond serve` store nodes <- three `cart` apps (each
//! listing both store nodes) <- `sessiond balance`. A browser with a cookie
//! jar goes round-robin over every app and keeps one session; killing an app
//! and a store node (SIGKILL) mid-run loses no session; login rotates the
//! session id through the balancer.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::header::COOKIE;
use serde_json::{Value, json};
use sessiond_e2e::stack::{STEP, Stack, browser, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_app_serves_a_third_and_one_session_counts_every_visit() {
    let stack = Stack::start().await;
    let browser = browser();
    let mut served: HashMap<String, u32> = HashMap::new();
    for visit in 1..=300u64 {
        let answer = send(browser.get(stack.url("/")))
            .await
            .unwrap_or_else(|err| panic!("visit {visit}: {err}\n{}", stack.logs()));
        assert_eq!(answer.status, 200, "visit {visit}: {answer:?}");
        let instance = answer.served_by.clone().expect("x-served-by");
        assert_eq!(answer.body["instance"], json!(instance));
        assert_eq!(answer.body["visits"], json!(visit), "{answer:?}");
        *served.entry(instance).or_default() += 1;
    }
    assert_eq!(
        served,
        HashMap::from([
            ("app-1".to_owned(), 100),
            ("app-2".to_owned(), 100),
            ("app-3".to_owned(), 100),
        ])
    );
    let stats = stack.balancer.stats().await;
    let requests: Vec<u64> = stats["upstreams"]
        .as_array()
        .expect("upstreams")
        .iter()
        .map(|u| u["requests"].as_u64().expect("requests"))
        .collect();
    assert_eq!(requests, [100, 100, 100], "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_app_and_a_store_node_mid_run_loses_no_session() {
    let mut stack = Stack::start().await;
    let browser = browser();
    let mut ok = 0u64;
    let mut failed = Vec::new();
    let mut last_visits = 0u64;
    let mut jumps = Vec::new();
    let mut served_after_kill: HashMap<String, u32> = HashMap::new();
    for request in 0..300 {
        if request == 100 {
            stack.apps[1].kill();
        }
        if request == 200 {
            // Kill the node that owns the session (rendezvous hashing puts
            // it on one of the two): the other must take over from Redis.
            let owner = stack.session_owner().await;
            stack.stores[owner].kill();
        }
        match send(browser.get(stack.url("/"))).await {
            Ok(answer) if answer.status == 200 => {
                ok += 1;
                let visits = answer.body["visits"].as_u64().expect("visits");
                if visits != last_visits + 1 {
                    jumps.push((request, last_visits, visits));
                }
                last_visits = visits;
                if request >= 100 {
                    let by = answer.served_by.unwrap_or_default();
                    *served_after_kill.entry(by).or_default() += 1;
                }
            }
            Ok(answer) => failed.push((request, format!("{}: {}", answer.status, answer.body))),
            Err(err) => failed.push((request, err)),
        }
    }
    eprintln!(
        "whole stack, app-2 killed at request 100 and the session's store node at 200: \
         {ok} of 300 answered 200, {} failed: {failed:?}",
        failed.len()
    );
    assert_eq!(
        jumps,
        [],
        "the visit counter skipped or repeated (request, before, after)"
    );
    assert_eq!(
        last_visits,
        ok,
        "every answered visit was counted once\n{}",
        stack.logs()
    );
    assert!(
        failed.len() <= 5,
        "{} failed requests: {failed:?}\n{}",
        failed.len(),
        stack.logs()
    );
    assert_eq!(
        served_after_kill.get("app-2"),
        None,
        "{served_after_kill:?}"
    );
    let app_2 = stack.apps[1].url.clone();
    stack
        .balancer
        .wait_until_up(&app_2, false, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_through_the_balancer_rotates_the_session_id() {
    let stack = Stack::start().await;
    let browser = browser();

    let first = send(browser.get(stack.url("/"))).await.expect("visit");
    assert_eq!(first.status, 200);
    assert_eq!(first.body["visits"], 1);
    let old_sid = first.sid.clone().expect("a sid cookie on the first visit");
    let apple = send(browser.post(stack.url("/cart/apple")))
        .await
        .expect("add to cart");
    assert_eq!(apple.status, 200);
    assert_eq!(apple.body["cart"], json!(["apple"]));

    let login = send(browser.post(stack.url("/login/alice")))
        .await
        .expect("login");
    assert_eq!(login.status, 200);
    assert_eq!(login.body["user"], "alice");
    let new_sid = login.sid.clone().expect("login sets a new sid cookie");
    assert_ne!(new_sid, old_sid, "login must change the session id");

    // Someone holding the old id (set by hand, no jar) gets a fresh session,
    // on whichever app.
    let stranger = sessiond_e2e::http_client(STEP);
    let stale = send(
        stranger
            .get(stack.url("/"))
            .header(COOKIE, format!("sid={old_sid}")),
    )
    .await
    .expect("stale visit");
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body["visits"], 1, "{stale:?}");
    assert_eq!(stale.body["cart"], json!([]));
    assert_eq!(stale.body["user"], Value::Null);
    let stale_sid = stale.sid.clone().expect("a fresh session gets a cookie");
    assert_ne!(stale_sid, old_sid);
    assert_ne!(stale_sid, new_sid);

    // The jar's new cookie keeps the cart and the user, on every app.
    let mut instances = Vec::new();
    for visits in 2..=4 {
        let after = send(browser.get(stack.url("/"))).await.expect("visit");
        assert_eq!(after.status, 200);
        let instance = after.served_by.clone().expect("x-served-by");
        assert_eq!(
            after.body,
            json!({"instance": instance, "visits": visits, "cart": ["apple"], "user": "alice"})
        );
        instances.push(instance);
    }
    instances.sort();
    assert_eq!(instances, ["app-1", "app-2", "app-3"]);
}
