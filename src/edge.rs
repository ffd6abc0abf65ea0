//! The unauthenticated edge of the SSH and PostgreSQL rooms: what anyone
//! on the network can make the broker spend before it knows who they are.
//!
//! - A cap on connections per source address that have not authenticated
//!   yet ([`Edge::admit`]): a client that only opens sockets cannot hold
//!   every slot of the listener. The slot is given back when the connection
//!   authenticates or ends.
//! - `server.auth_timeout`, the deadline the rooms give a connection to
//!   authenticate ([`Edge::auth_timeout`]).
//! - Failure events that a flood cannot turn into a flood of fsynced
//!   appends ([`Edge::failure`]): per source and kind of event, the first
//!   `server.failure_events_per_minute` of a minute are recorded one by one,
//!   the rest are counted into one summary event (their count, when, and
//!   what they tried) recorded when the minute is over. Nothing is dropped:
//!   the counts of a source's events add up to its attempts. Memory is
//!   bounded: at most [`MAX_WINDOWS`] sources are tracked, further sources
//!   share one window, and a summary lists at most [`MAX_TRIED`] distinct
//!   attempts (the others are counted).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::audit::Audit;
use crate::config::ServerConfig;
use crate::domain::audit::{AuditEvent, EventKind, Outcome, format_us, now_us};
use crate::metrics::Metrics;

/// Sources whose failures are counted apart; past this, new sources share
/// one window (summarised with source_ip unset).
pub const MAX_WINDOWS: usize = 4096;
/// Distinct attempts a summary lists by name.
pub const MAX_TRIED: usize = 16;
/// Longest description of one attempt kept in a summary.
const MAX_TRIED_LEN: usize = 160;
/// The aggregation window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// A cheap, cloneable handle shared by the rooms.
#[derive(Clone)]
pub struct Edge {
    inner: Arc<Inner>,
}

struct Inner {
    audit: Audit,
    metrics: Arc<Metrics>,
    auth_timeout: Duration,
    per_source: usize,
    per_minute: u32,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    unauthenticated: HashMap<IpAddr, usize>,
    windows: HashMap<(Option<String>, EventKind), Window>,
}

/// One source's failures of one kind within a minute.
struct Window {
    opened: Instant,
    /// Recorded one by one so far.
    recorded: u32,
    held: Option<Held>,
}

/// Failures folded into the window's summary.
struct Held {
    count: u64,
    outcome: Outcome,
    first_us: i64,
    last_us: i64,
    tried: BTreeMap<String, u64>,
    others: u64,
}

/// A connection's slot among its source's unauthenticated connections;
/// dropping it (authenticated, or gone) gives the slot back.
pub struct Unauthenticated {
    inner: Arc<Inner>,
    ip: IpAddr,
}

/// The source already holds `server.max_unauthenticated_per_source`
/// connections that have not authenticated.
#[derive(Debug, Clone, Copy)]
pub struct TooMany {
    pub limit: usize,
}

impl std::fmt::Display for TooMany {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "too many unauthenticated connections from this address (server.max_unauthenticated_per_source = {})",
            self.limit
        )
    }
}

impl Edge {
    pub fn new(audit: Audit, metrics: Arc<Metrics>, config: &ServerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                audit,
                metrics,
                auth_timeout: config.auth_timeout.0,
                per_source: config.max_unauthenticated_per_source.max(1),
                per_minute: config.failure_events_per_minute,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// How long a connection may take to authenticate (`server.auth_timeout`).
    pub fn auth_timeout(&self) -> Duration {
        self.inner.auth_timeout
    }

    /// Takes a slot for a new connection from `ip`, or says why not.
    pub fn admit(&self, ip: IpAddr) -> Result<Unauthenticated, TooMany> {
        let ip = ip.to_canonical();
        let mut state = self.inner.lock();
        let held = state.unauthenticated.entry(ip).or_insert(0);
        if *held >= self.inner.per_source {
            drop(state);
            Metrics::inc(&self.inner.metrics.unauthenticated_refused);
            return Err(TooMany {
                limit: self.inner.per_source,
            });
        }
        *held += 1;
        Ok(Unauthenticated {
            inner: self.inner.clone(),
            ip,
        })
    }

    /// Records a failure of an unauthenticated client: one by one while its
    /// source is under the minute's allowance, else folded into the
    /// minute's summary. `tried` says what the attempt was, in a few words
    /// (the summary counts attempts by it).
    pub async fn failure(&self, event: AuditEvent, tried: &str) {
        let now = Instant::now();
        let (record, due) = {
            let mut state = self.inner.lock();
            let mut key = (event.source_ip.clone(), event.kind);
            if !state.windows.contains_key(&key) && state.windows.len() >= MAX_WINDOWS {
                key.0 = None;
            }
            let window = state.windows.entry(key.clone()).or_insert(Window {
                opened: now,
                recorded: 0,
                held: None,
            });
            let mut due = None;
            if now.duration_since(window.opened) >= WINDOW {
                due = window.held.take().map(|held| summary(&key, held));
                *window = Window {
                    opened: now,
                    recorded: 0,
                    held: None,
                };
            }
            let record = window.recorded < self.inner.per_minute;
            if record {
                window.recorded += 1;
            } else {
                window.hold(&event, tried);
            }
            (record, due)
        };
        if let Some(summary) = due {
            self.inner.audit.note(summary).await;
        }
        if record {
            self.inner.audit.note(event).await;
        } else {
            Metrics::inc(&self.inner.metrics.failures_aggregated);
        }
    }

    /// Records the summaries of minutes that are over, every second, until
    /// `shutdown`. The caller records what is left with [`Edge::flush`]
    /// once the rooms have stopped.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => self.flush_expired(Instant::now()).await,
            }
        }
    }

    /// Records every pending summary now (at shutdown).
    pub async fn flush(&self) {
        let due: Vec<AuditEvent> = {
            let mut state = self.inner.lock();
            state
                .windows
                .drain()
                .filter_map(|(key, mut window)| window.held.take().map(|h| summary(&key, h)))
                .collect()
        };
        for event in due {
            self.inner.audit.note(event).await;
        }
    }

    async fn flush_expired(&self, now: Instant) {
        let due: Vec<AuditEvent> = {
            let mut state = self.inner.lock();
            let mut due = Vec::new();
            state.windows.retain(|key, window| {
                if now.duration_since(window.opened) < WINDOW {
                    return true;
                }
                if let Some(held) = window.held.take() {
                    due.push(summary(key, held));
                }
                false
            });
            due
        };
        for event in due {
            self.inner.audit.note(event).await;
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain counters behind:
        // still usable.
        crate::sync::lock(&self.state)
    }
}

impl Window {
    fn hold(&mut self, event: &AuditEvent, tried: &str) {
        let held = self.held.get_or_insert_with(|| Held {
            count: 0,
            outcome: event.outcome,
            first_us: event.time_us,
            last_us: event.time_us,
            tried: BTreeMap::new(),
            others: 0,
        });
        held.count += 1;
        held.first_us = held.first_us.min(event.time_us);
        held.last_us = held.last_us.max(event.time_us);
        let tried: String = tried.chars().take(MAX_TRIED_LEN).collect();
        if let Some(n) = held.tried.get_mut(&tried) {
            *n += 1;
        } else if held.tried.len() < MAX_TRIED {
            held.tried.insert(tried, 1);
        } else {
            held.others += 1;
        }
    }
}

/// The summary event of a window: same kind, outcome and source as the
/// failures it stands for.
fn summary(key: &(Option<String>, EventKind), held: Held) -> AuditEvent {
    let mut event = AuditEvent::new(key.1, held.outcome).details(json!({
        "aggregated": true,
        "count": held.count,
        "first": format_us(held.first_us),
        "last": format_us(held.last_us),
        "window": format!("{}s", WINDOW.as_secs()),
        "tried": held.tried,
        "tried_others": held.others,
        "sources": if key.0.is_some() { "one" } else { "many (too many sources to count apart)" },
    }));
    event.source_ip = key.0.clone();
    event.time_us = now_us().max(held.last_us);
    event
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        if let Some(held) = state.unauthenticated.get_mut(&self.ip) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                state.unauthenticated.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> Window {
        Window {
            opened: Instant::now(),
            recorded: 0,
            held: None,
        }
    }

    #[test]
    fn a_summary_counts_every_attempt_and_lists_a_bounded_number() {
        let mut w = window();
        let event = AuditEvent::new(EventKind::LoginFailure, Outcome::Failure);
        for i in 0..1000 {
            w.hold(&event, &format!("ssh user u{}", i % 40));
        }
        let held = w.held.take().unwrap();
        assert_eq!(held.count, 1000);
        assert_eq!(held.tried.len(), MAX_TRIED);
        assert_eq!(held.tried.values().sum::<u64>() + held.others, 1000);
        let event = summary(&(Some("192.0.2.7".into()), EventKind::LoginFailure), held);
        assert_eq!(event.details["count"], 1000);
        assert_eq!(event.source_ip.as_deref(), Some("192.0.2.7"));
    }

    #[test]
    fn long_attempt_descriptions_are_cut() {
        let mut w = window();
        let event = AuditEvent::new(EventKind::TokenRejected, Outcome::Denied);
        w.hold(&event, &"x".repeat(10_000));
        let held = w.held.unwrap();
        assert!(held.tried.keys().all(|k| k.len() <= MAX_TRIED_LEN));
    }
}
