//! A real headless browser for the tests of the status pages: Debian's
//! `chromium` (installed by `scripts/install-test-deps.sh`) loads a page and
//! prints the DOM it built; and look-ups of elements by id in that DOM.

use std::time::Duration;

use tokio::process::Command;

/// The longest a page may take to load and print.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// The DOM headless Chromium builds from `url` (`--dump-dom`), with a
/// fresh profile in a temp dir and no network of its own.
pub async fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("a temp dir for the browser profile");
    let mut command = Command::new("chromium");
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .kill_on_drop(true);
    let output = tokio::time::timeout(LOAD_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("chromium did not print {url} within {LOAD_TIMEOUT:?}"))
        .expect("cannot run chromium (scripts/install-test-deps.sh installs it)");
    assert!(
        output.status.success(),
        "chromium failed on {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The opening tag and text of the element with `id` (up to its first
/// child's or its own end tag).
fn element<'a>(dom: &'a str, id: &str) -> (&'a str, &'a str) {
    let marker = format!("id=\"{id}\"");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no element with id {id} in the page"));
    let start = dom[..at].rfind('<').unwrap_or(0);
    let tag_end = at + dom[at..].find('>').expect("the tag ends");
    let rest = &dom[tag_end + 1..];
    let text_end = rest.find('<').unwrap_or(rest.len());
    (&dom[start..=tag_end], &rest[..text_end])
}

/// The text of the element with `id`.
pub fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    element(dom, id).1
}

/// Attribute `name` of the element with `id`.
pub fn attribute_of<'a>(dom: &'a str, id: &str, name: &str) -> &'a str {
    let tag = element(dom, id).0;
    let marker = format!("{name}=\"");
    let value = tag
        .split_once(&marker)
        .unwrap_or_else(|| panic!("the element {id} has no {name}"))
        .1;
    value.split('"').next().unwrap_or_default()
}
