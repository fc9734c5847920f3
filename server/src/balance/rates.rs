//! Requests per upstream per second over the last five minutes, for the
//! admin page's sparklines: each upstream's request count sampled once a
//! second into a [`Ring`].

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::pool::Pool;
use crate::sparkline::{self, Ring};

/// Seconds over which the page's "now" rate is averaged.
const RECENT: usize = 10;

/// Each upstream's request count (by URL, as upstreams come and go),
/// once a second.
#[derive(Debug, Default)]
pub struct UpstreamRates {
    ring: Mutex<Ring<Vec<(String, u64)>>>,
}

impl UpstreamRates {
    /// Starts sampling `pool`; the sampler ends when the rates are dropped.
    pub fn start(pool: Arc<Pool>) -> Arc<Self> {
        let rates = Arc::new(Self::default());
        tokio::spawn(sample(Arc::downgrade(&rates), pool));
        rates
    }

    /// Upstream `url`'s requests per second lately, and its sparkline.
    pub fn show(&self, url: &str, title: &str) -> (f64, String) {
        let ring = self.ring.lock();
        let count = |sample: &Vec<(String, u64)>| {
            sample
                .iter()
                .find(|(sampled, _)| sampled == url)
                .map_or(0, |(_, count)| *count)
        };
        (
            ring.recent_rate(RECENT, count),
            sparkline::svg(&ring.rates(count), 150, 20, title),
        )
    }
}

async fn sample(rates: Weak<UpstreamRates>, pool: Arc<Pool>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        let Some(rates) = rates.upgrade() else {
            return;
        };
        let counts = pool
            .upstreams()
            .iter()
            .map(|upstream| {
                let stats = upstream.stats();
                (stats.url, stats.requests)
            })
            .collect();
        rates.ring.lock().push(Instant::now(), counts);
    }
}
