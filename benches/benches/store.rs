//! Criterion micro-benchmarks of the session store (`sessiond::store::Store`)
//! side by side with a bare map baseline, a plain `DashMap<String, Vec<u8>>`
//! doing the same work.
//!
//! Run with:
//!
//! ```text
//! cargo bench -p sessiond-benches --bench store
//! ```
//!
//! Setup: 10,000 sessions of 1 KiB of data each (a JSON string: 1,022 `x`
//! between quotes, 1,024 bytes), each with its own data buffer, accessed at
//! random. Every benchmark runs from 1 thread and from 2 threads at once; the
//! 2-thread figure is the wall time of both threads divided by the total
//! number of operations (so perfect scaling halves it). With 2 threads each
//! thread draws from its own half of the ids, so the threads share the store's
//! (or the map's) shards and locks but never a session.
//!
//! What is compared (the report reads `group/variant/threads`):
//!
//! - `get_1KiB/store`: `Store::get`, which refreshes the sliding expiry and
//!   returns a `Session` snapshot (the data copied out of the session's
//!   record: an allocation and a 1 KiB copy).
//! - `get_1KiB/dashmap_clone`: look the key up and clone the `Vec<u8>` (an
//!   allocation and a 1 KiB copy), the map's nearest way of handing out an
//!   owned value as the store does.
//! - `get_1KiB/dashmap_len`: look the key up and read the value's length in
//!   place (`map.get(k).map(|v| v.len())`): no clone, no reference count,
//!   the floor of a read.
//! - `put_1KiB/store`: `Store::put(&id, data.clone(), None, None)` on an
//!   existing session, `data` being a `bytes::Bytes` (a reference count
//!   increment); the store checks the version, does its memory accounting,
//!   bumps the version, refreshes the expiry, copies the data into the
//!   session's record (in place, the length being unchanged) and returns a
//!   snapshot.
//! - `put_1KiB/dashmap`: replace an existing key's value with a fresh 1 KiB
//!   `Vec<u8>` (an allocation and a copy; the old value is freed), in place
//!   through `get_mut`, so that, like the store, it allocates no key.
//! - `revoke_user/{sessions}`: `Store::revoke_user` of one user of 1,000
//!   or 16,000 sessions (64 bytes of data each), reported per session
//!   revoked: a revocation that costs the same per session at both sizes
//!   is linear in the user's sessions (it holds the shards' locks while
//!   it runs).

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dashmap::DashMap;
use sessiond::store::{Owner, Store, StoreConfig, SystemClock, UserLimit};
use sessiond_proto::{SessionId, UserName};

/// Sessions in the store (and keys in the map) before measuring.
const SESSIONS: usize = 10_000;
/// Bytes of data per session.
const DATA_LEN: usize = 1024;
/// Idle TTL of the sessions: long enough that none expires during a run.
const TTL_MS: u64 = 3_600_000;
/// Length of the precomputed random access sequence (a power of two).
const ORDER_LEN: usize = 1 << 16;

/// A session's data: a JSON string of `DATA_LEN` bytes.
fn session_data() -> Vec<u8> {
    let mut data = Vec::with_capacity(DATA_LEN);
    data.push(b'"');
    data.resize(DATA_LEN - 1, b'x');
    data.push(b'"');
    data
}

/// The store and the map, holding the same sessions, and a random order in
/// which to visit them.
struct Fixture {
    store: Store,
    ids: Vec<SessionId>,
    map: DashMap<String, Vec<u8>>,
    keys: Vec<String>,
    order: Vec<u32>,
}

impl Fixture {
    fn new() -> Self {
        let store = Store::new(StoreConfig::default(), Arc::new(SystemClock));
        let map = DashMap::new();
        let data = session_data();
        let mut ids = Vec::with_capacity(SESSIONS);
        let mut keys = Vec::with_capacity(SESSIONS);
        for _ in 0..SESSIONS {
            // Each session gets its own buffer, as sessions written by
            // separate requests would.
            let session = store
                .create(
                    SessionId::random(),
                    Bytes::copy_from_slice(&data),
                    TTL_MS,
                    None,
                    None,
                )
                .expect("an unbounded store takes every session");
            let key = session.id.to_string();
            map.insert(key.clone(), data.clone());
            ids.push(session.id);
            keys.push(key);
        }
        // xorshift64: a fixed, cheap pseudo-random sequence, computed before
        // measuring so drawing an index costs the same in every variant.
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let order = (0..ORDER_LEN)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % SESSIONS as u64) as u32
            })
            .collect();
        Self {
            store,
            ids,
            map,
            keys,
            order,
        }
    }

    /// The index of the session that operation `i` of `thread` (out of
    /// `threads`) visits. With 2 threads, thread `t` keeps to the indexes
    /// congruent to `t` modulo 2.
    fn pick(&self, thread: usize, threads: usize, i: u64) -> usize {
        let at = (i as usize).wrapping_add(thread * 30_011) & (ORDER_LEN - 1);
        let index = self.order[at] as usize;
        if threads == 1 {
            index
        } else {
            index - index % threads + thread
        }
    }
}

/// Runs `iters` operations from `threads` threads (each doing its share) and
/// returns the wall time from when all threads start to when the last ends.
fn run<F>(threads: usize, iters: u64, op: F) -> Duration
where
    F: Fn(usize, u64) + Sync,
{
    if threads == 1 {
        let start = Instant::now();
        for i in 0..iters {
            op(0, i);
        }
        return start.elapsed();
    }
    let barrier = Barrier::new(threads);
    let started: Vec<(Instant, Instant)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let (op, barrier) = (&op, &barrier);
                // Thread 0 takes the remainder when `iters` is not a multiple.
                let share = iters / threads as u64
                    + if thread == 0 {
                        iters % threads as u64
                    } else {
                        0
                    };
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..share {
                        op(thread, i);
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a benchmark thread panicked"))
            .collect()
    });
    let first_start = started.iter().map(|&(start, _)| start).min();
    let last_end = started.iter().map(|&(_, end)| end).max();
    match (first_start, last_end) {
        (Some(start), Some(end)) => end.duration_since(start),
        _ => Duration::ZERO,
    }
}

/// Thread counts every benchmark runs with.
const THREADS: [usize; 2] = [1, 2];

fn get_1kib(c: &mut Criterion) {
    let fixture = Fixture::new();
    let fx = &fixture;
    let mut group = c.benchmark_group("get_1KiB");
    for threads in THREADS {
        group.bench_function(format!("store/{threads}thread"), |b| {
            b.iter_custom(|iters| {
                run(threads, iters, |thread, i| {
                    let id = &fx.ids[fx.pick(thread, threads, i)];
                    black_box(fx.store.get(id).expect("the session is live"));
                })
            });
        });
        group.bench_function(format!("dashmap_clone/{threads}thread"), |b| {
            b.iter_custom(|iters| {
                run(threads, iters, |thread, i| {
                    let key = fx.keys[fx.pick(thread, threads, i)].as_str();
                    black_box(fx.map.get(key).map(|value| value.value().clone()));
                })
            });
        });
        group.bench_function(format!("dashmap_len/{threads}thread"), |b| {
            b.iter_custom(|iters| {
                run(threads, iters, |thread, i| {
                    let key = fx.keys[fx.pick(thread, threads, i)].as_str();
                    black_box(fx.map.get(key).map(|value| value.len()));
                })
            });
        });
    }
    group.finish();
}

fn put_1kib(c: &mut Criterion) {
    let fixture = Fixture::new();
    let fx = &fixture;
    // One buffer per thread, so the threads never share a reference count.
    let datas: Vec<Bytes> = (0..2).map(|_| Bytes::from(session_data())).collect();
    let raw = session_data();
    let mut group = c.benchmark_group("put_1KiB");
    for threads in THREADS {
        group.bench_function(format!("store/{threads}thread"), |b| {
            b.iter_custom(|iters| {
                run(threads, iters, |thread, i| {
                    let id = &fx.ids[fx.pick(thread, threads, i)];
                    let data = &datas[thread];
                    black_box(
                        fx.store
                            .put(id, data.clone(), None, None, None)
                            .expect("the session is live and fits"),
                    );
                })
            });
        });
        group.bench_function(format!("dashmap/{threads}thread"), |b| {
            b.iter_custom(|iters| {
                run(threads, iters, |thread, i| {
                    let key = fx.keys[fx.pick(thread, threads, i)].as_str();
                    if let Some(mut value) = fx.map.get_mut(key) {
                        *value = black_box(raw.to_vec());
                    }
                })
            });
        });
    }
    group.finish();
}

/// A store holding `sessions` sessions of one user, and the user.
fn one_users_sessions(sessions: u64) -> (Store, UserName) {
    let store = Store::new(StoreConfig::default(), Arc::new(SystemClock));
    let owner = Owner {
        user: UserName::parse("bulk").expect("a valid user name"),
        limit: UserLimit::default(),
    };
    let data = Bytes::from(vec![b'1'; 64]);
    for _ in 0..sessions {
        store
            .create(
                SessionId::random(),
                data.clone(),
                TTL_MS,
                None,
                Some(&owner),
            )
            .expect("an unbounded store takes every session");
    }
    (store, owner.user)
}

fn revoke_user(c: &mut Criterion) {
    let mut group = c.benchmark_group("revoke_user");
    group.sample_size(10);
    for sessions in [1_000, 16_000] {
        group.throughput(Throughput::Elements(sessions));
        group.bench_function(format!("{sessions}"), |b| {
            b.iter_batched(
                || one_users_sessions(sessions),
                |(store, user)| {
                    let revoked = store.revoke_user(&user, None);
                    assert_eq!(revoked.len() as u64, sessions);
                    store
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = get_1kib, put_1kib, revoke_user
}
criterion_main!(benches);
