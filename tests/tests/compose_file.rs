//! Keeps `docker-compose.yml` from rotting: parses it, resolves its YAML
//! merge keys (`<<: *store`, `<<: *app`), checks the topology (services,
//! health checks, who talks to whom, published ports) and runs the command
//! of every service built from this project against the real binary with
//! `--check-config` appended.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sessiond_e2e::binary;
use sessiond_e2e::cart::CART_BINARY;
use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlLoader};

fn compose_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml")
}

/// `value` with every mapping's `<<` merge key resolved (YAML 1.1 merge:
/// keys of the mapping win over merged ones; the first of a list of merged
/// mappings wins over the later ones). The YAML crate resolves aliases but
/// not merge keys.
fn resolve_merges(value: &Yaml) -> Yaml {
    match value {
        Yaml::Hash(hash) => {
            let merge_key = Yaml::String("<<".to_owned());
            let mut merged = Hash::new();
            for (key, value) in hash {
                if *key != merge_key {
                    merged.insert(key.clone(), resolve_merges(value));
                }
            }
            let sources: Vec<&Yaml> = match hash.get(&merge_key) {
                None => Vec::new(),
                Some(Yaml::Array(list)) => list.iter().collect(),
                Some(single) => vec![single],
            };
            for source in sources {
                let Yaml::Hash(source) = resolve_merges(source) else {
                    panic!("a merge key must name a mapping, got {source:?}");
                };
                for (key, value) in source {
                    merged.entry(key).or_insert(value);
                }
            }
            Yaml::Hash(merged)
        }
        Yaml::Array(list) => Yaml::Array(list.iter().map(resolve_merges).collect()),
        other => other.clone(),
    }
}

/// The compose file's services, merge keys resolved, by name.
fn services() -> BTreeMap<String, Yaml> {
    let path = compose_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    let documents = YamlLoader::load_from_str(&text).expect("docker-compose.yml is valid YAML");
    assert_eq!(documents.len(), 1, "one YAML document");
    let root = resolve_merges(&documents[0]);
    let Yaml::Hash(services) = &root["services"] else {
        panic!("no services mapping in {root:?}");
    };
    services
        .iter()
        .map(|(name, service)| {
            let name = name.as_str().expect("service names are strings").to_owned();
            (name, service.clone())
        })
        .collect()
}

/// A service's command as a list of words (compose's exec form).
fn command(service: &Yaml) -> Vec<String> {
    let Yaml::Array(words) = &service["command"] else {
        panic!("command must be a list (exec form): {service:?}");
    };
    words
        .iter()
        .map(|word| word.as_str().expect("command words are strings").to_owned())
        .collect()
}

/// The value after `flag` in `words`.
fn flag<'a>(words: &'a [String], flag: &str) -> &'a str {
    let position = words
        .iter()
        .position(|word| word == flag)
        .unwrap_or_else(|| panic!("no {flag} in {words:?}"));
    words
        .get(position + 1)
        .unwrap_or_else(|| panic!("{flag} has no value in {words:?}"))
}

fn built_here(service: &Yaml) -> bool {
    service["build"].as_str() == Some(".")
}

#[test]
fn yaml_merge_keys_are_resolved() {
    let documents = YamlLoader::load_from_str(
        "base: &base {a: 1, b: 2}\n\
         other: &other {c: 3, a: 9}\n\
         one: {<<: *base, b: 5}\n\
         two: {<<: [*base, *other], d: 4}\n",
    )
    .expect("YAML");
    let root = resolve_merges(&documents[0]);
    assert_eq!(root["one"]["a"].as_i64(), Some(1));
    assert_eq!(
        root["one"]["b"].as_i64(),
        Some(5),
        "the mapping's own key wins"
    );
    assert_eq!(
        root["two"]["a"].as_i64(),
        Some(1),
        "the first merged mapping wins"
    );
    assert_eq!(root["two"]["c"].as_i64(), Some(3));
    assert_eq!(root["two"]["d"].as_i64(), Some(4));
    assert!(root["one"]["<<"].is_badvalue(), "no merge key is left");
}

#[test]
fn the_expected_services_exist_and_all_have_a_healthcheck() {
    let services = services();
    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "app-1", "app-2", "app-3", "balancer", "redis", "store-1", "store-2"
        ]
    );
    for (name, service) in &services {
        let test = &service["healthcheck"]["test"];
        assert!(
            matches!(test, Yaml::Array(words) if !words.is_empty()),
            "{name} has no healthcheck test: {service:?}"
        );
    }
    for name in ["store-1", "store-2", "app-1", "app-2", "app-3", "balancer"] {
        assert!(
            built_here(&services[name]),
            "{name} is built from the project"
        );
    }
    assert_eq!(services["redis"]["image"].as_str(), Some("redis:7-alpine"));
    // Durable, and sessions kept in Redis's compact hash encoding.
    let redis = command(&services["redis"]);
    assert_eq!(flag(&redis, "--appendonly"), "yes");
    assert_eq!(flag(&redis, "--hash-max-listpack-value"), "8192");
}

#[test]
fn the_services_are_wired_together() {
    let services = services();

    // The balancer spreads over the three apps and publishes 8080.
    let balancer = command(&services["balancer"]);
    assert_eq!(&balancer[..2], ["sessiond", "balance"]);
    let upstreams: Vec<&str> = flag(&balancer, "--upstream").split(',').collect();
    assert_eq!(
        upstreams,
        [
            "http://app-1:3000",
            "http://app-2:3000",
            "http://app-3:3000"
        ]
    );
    let ports: Vec<&str> = services["balancer"]["ports"]
        .as_vec()
        .expect("balancer ports")
        .iter()
        .map(|port| port.as_str().expect("a port string"))
        .collect();
    assert!(ports.contains(&"8080:8080"), "{ports:?}");
    // The admin listener has no authentication: published on the host's
    // loopback only, never on every interface.
    assert!(ports.contains(&"127.0.0.1:8081:8081"), "{ports:?}");
    assert!(
        ports
            .iter()
            .all(|port| !port.ends_with(":8081") || port.starts_with("127.0.0.1:")),
        "the admin port must be published on loopback only: {ports:?}"
    );
    assert_eq!(flag(&balancer, "--listen"), "0.0.0.0:8080");
    assert_eq!(flag(&balancer, "--admin"), "0.0.0.0:8081");
    assert_eq!(flag(&balancer, "--health-path"), "/healthz");

    // Every app lists both store nodes (their binary-protocol port) and
    // listens where the balancer and its health check look.
    for index in 1..=3 {
        let name = format!("app-{index}");
        let app = command(&services[&name]);
        assert_eq!(app[0], "cart");
        assert_eq!(flag(&app, "--sessiond"), "store-1:7701,store-2:7701");
        assert_eq!(flag(&app, "--name"), name);
        assert_eq!(flag(&app, "--listen"), "0.0.0.0:3000");
    }

    // Both store nodes share one Redis, with acknowledged writes in it.
    for name in ["store-1", "store-2"] {
        let store = command(&services[name]);
        assert_eq!(&store[..2], ["sessiond", "serve"]);
        assert_eq!(flag(&store, "--redis"), "redis://redis:6379");
        assert_eq!(flag(&store, "--redis-mode"), "sync");
        assert_eq!(flag(&store, "--tcp"), "0.0.0.0:7701");
        assert_eq!(flag(&store, "--http"), "0.0.0.0:7700");
    }

    // Each health check asks the port its service listens on.
    let health = |name: &str| -> String {
        services[name]["healthcheck"]["test"]
            .as_vec()
            .expect("a test list")
            .iter()
            .map(|word| word.as_str().expect("a word").to_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    for name in ["store-1", "store-2"] {
        assert!(
            health(name).ends_with("http://127.0.0.1:7700/readyz"),
            "{name}: {}",
            health(name)
        );
    }
    for name in ["app-1", "app-2", "app-3"] {
        assert!(
            health(name).ends_with("http://127.0.0.1:3000/healthz"),
            "{name}: {}",
            health(name)
        );
    }
    assert!(
        health("balancer").ends_with("http://127.0.0.1:8081/healthz"),
        "{}",
        health("balancer")
    );
}

/// Runs `program args` (bounded to 20 s): exit code, stdout and stderr.
fn run(program: PathBuf, args: &[String]) -> (Option<i32>, String, String) {
    let mut child = Command::new(&program)
        .args(args)
        .env("SESSIOND_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {}: {err}", program.display()));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} {args:?} did not exit (it must not serve)",
                program.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn every_project_command_passes_check_config() {
    let services = services();
    let mut checked = Vec::new();
    for (name, service) in &services {
        if !built_here(service) {
            continue;
        }
        let words = command(service);
        let program = match words[0].as_str() {
            "sessiond" => binary("sessiond:sessiond"),
            "cart" => binary(CART_BINARY),
            other => panic!("{name} runs {other:?}, not a binary of this project"),
        };
        let mut args = words[1..].to_vec();
        args.push("--check-config".to_owned());
        let (code, stdout, stderr) = run(program, &args);
        assert_eq!(
            code,
            Some(0),
            "{name}: {words:?} --check-config\nstdout: {stdout}\nstderr: {stderr}"
        );
        assert!(
            stdout.starts_with("configuration ok"),
            "{name}: {stdout}{stderr}"
        );
        checked.push(name.as_str());
    }
    assert_eq!(
        checked,
        ["app-1", "app-2", "app-3", "balancer", "store-1", "store-2"]
    );
}
