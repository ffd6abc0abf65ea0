//! SIEM export (issue 13): the audit trail copied to `[[export]]` sinks
//! (CloudWatch Logs, S3, HTTPS webhooks), at least once and in `seq` order.
//!
//! Each sink has its own task and its own cursor in the store
//! (`store::export`): the task reads committed events after the cursor
//! (keyset by `seq`), hands them to the sink, and moves the cursor only
//! after the sink acknowledged them. A restart resumes at the cursor, so
//! nothing is skipped; events delivered but not yet recorded as delivered
//! are sent again, and every line carries `seq`, `hash` and `prev_hash`, so
//! duplicates are recognisable and the copy verifies against the chain
//! (`pam audit verify --against`).
//!
//! A sink that is down never slows sessions or audit appends: the export
//! only reads the store, on its own tasks, and retries with backoff and
//! jitter while its lag grows (`pam_export_lag_events{sink}`); past the
//! sink's thresholds the monitor records `export.lagging`, again every
//! `lag_repeat` while it lasts, and once more when the sink recovers.
//!
//! In a fleet, one broker at a time exports a sink: the holder of the
//! sink's lease in the store.

pub mod cloudwatch;
pub mod ocsf;
pub mod s3;
pub mod verify;
pub mod webhook;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::Audit;
use crate::aws::Aws;
use crate::config::{ExportConfig, ExportFormat, ExportKind};
use crate::domain::audit::{AuditEvent, EventKind, EventRecord, Outcome, format_us, now_us};
use crate::metrics::{Metrics, SinkMetrics};
use crate::store::{self, Db};
use crate::sync::lock;

/// How long a lease on a sink lasts; renewed at half-time.
const LEASE: Duration = Duration::from_secs(30);
/// How often an idle sink looks for new events.
const POLL: Duration = Duration::from_millis(500);
/// Events read from the store per query at most.
const READ_MAX: usize = 2000;
/// How often the monitor updates lag gauges and checks thresholds.
const MONITOR_TICK: Duration = Duration::from_secs(1);

/// The export service: one task per sink and a monitor.
pub struct Exporter {
    db: Db,
    audit: Audit,
    node: String,
    sinks: Vec<(Sink, Arc<SinkState>)>,
}

/// One exported event, encoded once for its sink.
#[derive(Debug, Clone)]
pub struct Line {
    pub seq: i64,
    pub time_us: i64,
    /// One JSON object, no newline.
    pub text: String,
}

/// What a sink did with a batch: the first `delivered` lines were
/// acknowledged; `error` says why the rest were not.
#[derive(Debug)]
pub struct Delivery {
    pub delivered: usize,
    pub error: Option<String>,
}

impl Delivery {
    pub fn all(lines: &[Line]) -> Delivery {
        Delivery {
            delivered: lines.len(),
            error: None,
        }
    }

    pub fn failed(delivered: usize, error: impl Into<String>) -> Delivery {
        Delivery {
            delivered,
            error: Some(error.into()),
        }
    }
}

/// A configured sink.
enum Sink {
    Cloudwatch(cloudwatch::Cloudwatch),
    S3(s3::S3),
    Webhook(webhook::Webhook),
}

impl Sink {
    async fn deliver(&mut self, lines: &[Line]) -> Delivery {
        match self {
            Sink::Cloudwatch(sink) => sink.deliver(lines).await,
            Sink::S3(sink) => sink.deliver(lines).await,
            Sink::Webhook(sink) => sink.deliver(lines).await,
        }
    }
}

/// What a sink's task and the monitor share.
struct SinkState {
    config: ExportConfig,
    metrics: Arc<SinkMetrics>,
    /// Whether this broker holds the sink's lease (exports it).
    leased: AtomicBool,
    /// The cursor as this broker last saw it (when leased).
    cursor: AtomicI64,
    /// When the sink last acknowledged anything (microseconds).
    last_delivery_us: AtomicI64,
    /// Why the last delivery failed, while it keeps failing.
    last_error: Mutex<Option<String>>,
}

impl Exporter {
    /// Builds the configured sinks. Fails (and so the broker does not
    /// start) when a sink's secret or CA file is missing.
    pub fn new(
        configs: &[ExportConfig],
        env: &HashMap<String, String>,
        db: Db,
        audit: Audit,
        aws: &Aws,
        metrics: &Metrics,
        node: String,
    ) -> anyhow::Result<Exporter> {
        let mut sinks = Vec::new();
        for config in configs {
            let label = format!("export \"{}\"", config.name);
            let sink = match &config.kind {
                ExportKind::Cloudwatch(cw) => Sink::Cloudwatch(cloudwatch::Cloudwatch::new(
                    aws.clone(),
                    cw.log_group.clone(),
                    cw.log_stream.clone(),
                )),
                ExportKind::S3(target) => {
                    Sink::S3(s3::S3::new(aws.clone(), &target.url, &config.name))
                }
                ExportKind::Webhook(hook) => Sink::Webhook(
                    webhook::Webhook::new(&config.name, hook, env)
                        .with_context(|| label.clone())?,
                ),
            };
            let state = Arc::new(SinkState {
                metrics: metrics.export_sink(&config.name),
                config: config.clone(),
                leased: AtomicBool::new(false),
                cursor: AtomicI64::new(0),
                last_delivery_us: AtomicI64::new(now_us()),
                last_error: Mutex::new(None),
            });
            sinks.push((sink, state));
        }
        Ok(Exporter {
            db,
            audit,
            node,
            sinks,
        })
    }

    /// Runs every sink and the monitor until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        if self.sinks.is_empty() {
            return;
        }
        let tasks = TaskTracker::new();
        let states: Vec<Arc<SinkState>> = self.sinks.iter().map(|(_, s)| s.clone()).collect();
        for (sink, state) in self.sinks {
            let runner = Runner {
                db: self.db.clone(),
                node: self.node.clone(),
                sink,
                state,
            };
            tasks.spawn(runner.run(shutdown.clone()));
        }
        tasks.spawn(monitor(
            self.db.clone(),
            self.audit.clone(),
            self.node.clone(),
            states,
            shutdown.clone(),
        ));
        tasks.close();
        tasks.wait().await;
    }
}

/// The retention hook: the highest `seq` every configured sink has
/// exported (see `store::export::exported_by_all`). Pruning must keep every
/// event above it.
pub async fn exported_by_all(db: &Db, configs: &[ExportConfig]) -> Result<i64, store::Error> {
    let names: Vec<String> = configs.iter().map(|c| c.name.clone()).collect();
    store::export::exported_by_all(db, &names).await
}

/// Encodes an event the way `format` wants it on the wire.
pub fn encode(record: &EventRecord, format: ExportFormat) -> Line {
    let native = record.to_json().to_string();
    let text = match format {
        ExportFormat::Native => native,
        ExportFormat::Ocsf => ocsf::event(record, &native).to_string(),
    };
    Line {
        seq: record.seq,
        time_us: record.time_us,
        text,
    }
}

/// One sink's export loop.
struct Runner {
    db: Db,
    node: String,
    sink: Sink,
    state: Arc<SinkState>,
}

impl Runner {
    async fn run(mut self, shutdown: CancellationToken) {
        let name = self.state.config.name.clone();
        let config = self.state.config.clone();
        let mut backoff = Backoff::new(config.retry_max.0);
        let mut pending: Vec<Line> = Vec::new();
        let mut pending_since = tokio::time::Instant::now();
        let mut next_seq = 1i64;
        let mut lease_until = 0i64;
        let mut failing = false;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // The lease: taken, renewed at half-time, or someone else's.
            let now = now_us();
            if now + micros(LEASE) / 2 >= lease_until {
                match store::export::claim(&self.db, &name, &self.node, now, now + micros(LEASE))
                    .await
                {
                    Ok(Some(cursor)) => {
                        let was_leased = self.state.leased.swap(true, Ordering::Relaxed);
                        if !was_leased || cursor > self.state.cursor.load(Ordering::Relaxed) {
                            // Newly ours (or moved by another broker meanwhile):
                            // start over from the stored cursor.
                            self.state.cursor.store(cursor, Ordering::Relaxed);
                            self.state.metrics.set_cursor(cursor);
                            pending.clear();
                            next_seq = cursor + 1;
                        }
                        lease_until = now + micros(LEASE);
                    }
                    Ok(None) => {
                        self.state.leased.store(false, Ordering::Relaxed);
                        pending.clear();
                        lease_until = 0;
                        if sleep(LEASE / 4, &shutdown).await {
                            break;
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(sink = %name, error = %e, "export: cannot read the sink's cursor");
                        if sleep(backoff.next(), &shutdown).await {
                            break;
                        }
                        continue;
                    }
                }
            }

            // Read what is committed after what we hold.
            let mut read_any = false;
            if pending.len() < config.batch_max {
                let room = (config.batch_max - pending.len()).min(READ_MAX);
                match store::audit::range(&self.db, next_seq, room as u32).await {
                    Ok(events) => {
                        if let Some(first) = events.first()
                            && first.seq != next_seq
                        {
                            tracing::warn!(
                                sink = %name,
                                expected = next_seq,
                                found = first.seq,
                                "export: events are missing from the store (run `pam audit verify`)"
                            );
                        }
                        if !events.is_empty() {
                            if pending.is_empty() {
                                pending_since = tokio::time::Instant::now();
                            }
                            read_any = true;
                            next_seq = events[events.len() - 1].seq + 1;
                            let format = config.format;
                            pending.extend(events.iter().map(|e| encode(e, format)));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(sink = %name, error = %e, "export: cannot read the audit trail");
                        if sleep(backoff.next(), &shutdown).await {
                            break;
                        }
                        continue;
                    }
                }
            }

            let due = !pending.is_empty()
                && (pending.len() >= config.batch_max
                    || pending_since.elapsed() >= config.flush_interval.0);
            if due {
                let delivery = tokio::select! {
                    d = self.sink.deliver(&pending) => d,
                    // Unacknowledged events are sent again after a restart.
                    _ = shutdown.cancelled() => break,
                };
                if delivery.delivered > 0 {
                    let last = pending[delivery.delivered - 1].seq;
                    pending.drain(..delivery.delivered);
                    pending_since = tokio::time::Instant::now();
                    self.state.cursor.store(last, Ordering::Relaxed);
                    self.state.metrics.set_cursor(last);
                    self.state.metrics.add_exported(delivery.delivered as u64);
                    self.state
                        .last_delivery_us
                        .store(now_us(), Ordering::Relaxed);
                    match store::export::advance(&self.db, &name, &self.node, last, now_us()).await
                    {
                        Ok(true) => {}
                        // Another broker took the sink over: claim again.
                        Ok(false) => lease_until = 0,
                        // Not recorded: these events go out again after a
                        // restart (duplicates, never a gap).
                        Err(e) => {
                            tracing::warn!(sink = %name, error = %e, "export: cannot record the sink's cursor");
                        }
                    }
                }
                match delivery.error {
                    None => {
                        if failing {
                            tracing::info!(sink = %name, "export: sink reachable again");
                            failing = false;
                        }
                        backoff.reset();
                        set_error(&self.state, None);
                        continue;
                    }
                    Some(error) => {
                        self.state.metrics.add_error();
                        if !failing {
                            tracing::warn!(sink = %name, error = %error, "export: delivery failed; retrying with backoff");
                            failing = true;
                        }
                        set_error(&self.state, Some(error));
                        if sleep(backoff.next(), &shutdown).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            if !read_any {
                // Caught up, or waiting for a batch to fill.
                let wait = if pending.is_empty() {
                    POLL
                } else {
                    config
                        .flush_interval
                        .0
                        .saturating_sub(pending_since.elapsed())
                        .min(POLL)
                };
                if sleep(wait, &shutdown).await {
                    break;
                }
            }
        }
        if self.state.leased.swap(false, Ordering::Relaxed)
            && let Err(e) = store::export::release(&self.db, &name, &self.node).await
        {
            tracing::warn!(sink = %name, error = %e, "export: cannot release the sink's lease");
        }
    }
}

fn set_error(state: &SinkState, error: Option<String>) {
    *lock(&state.last_error) = error;
}

/// Lag gauges for every sink, and `export.lagging` for the sinks this
/// broker exports.
async fn monitor(
    db: Db,
    audit: Audit,
    node: String,
    states: Vec<Arc<SinkState>>,
    shutdown: CancellationToken,
) {
    let mut lagging: Vec<Option<Lagging>> = states.iter().map(|_| None).collect();
    // When each sink's lag last went from zero to positive.
    let mut behind_since: Vec<Option<i64>> = states.iter().map(|_| None).collect();
    loop {
        if sleep(MONITOR_TICK, &shutdown).await {
            return;
        }
        let head = match store::audit::head(&db).await {
            Ok(head) => head.seq,
            Err(_) => continue,
        };
        let stored = if states.iter().any(|s| !s.leased.load(Ordering::Relaxed)) {
            store::export::cursors(&db).await.unwrap_or_default()
        } else {
            Vec::new()
        };
        let now = now_us();
        for (i, state) in states.iter().enumerate() {
            let config = &state.config;
            let leased = state.leased.load(Ordering::Relaxed);
            let cursor = if leased {
                state.cursor.load(Ordering::Relaxed)
            } else {
                stored
                    .iter()
                    .find(|c| c.sink == config.name)
                    .map_or(0, |c| c.seq)
            };
            let lag = (head - cursor).max(0);
            state.metrics.set_lag(lag as u64);
            if lag == 0 {
                behind_since[i] = None;
            } else if behind_since[i].is_none() {
                behind_since[i] = Some(now);
            }
            if !leased {
                // Another broker exports this sink and reports its lag.
                lagging[i] = None;
                state.metrics.set_lagging(false);
                continue;
            }
            let waiting_since = behind_since[i]
                .unwrap_or(now)
                .max(state.last_delivery_us.load(Ordering::Relaxed));
            let waiting = Duration::from_micros((now - waiting_since).max(0) as u64);
            let over = lag as u64 >= config.lag_events || (lag > 0 && waiting >= config.lag_time.0);
            let error = lock(&state.last_error).clone();
            let report = |state_name: &str, outcome: Outcome, since: i64, max_lag: i64| {
                AuditEvent::new(EventKind::ExportLagging, outcome)
                    .actor(format!("pam@{node}"))
                    .details(serde_json::json!({
                        "sink": config.name,
                        "sink_kind": config.kind.name(),
                        "state": state_name,
                        "lag_events": lag,
                        "max_lag_events": max_lag,
                        "exported_seq": cursor,
                        "head_seq": head,
                        "lagging_since": format_us(since),
                        "waiting_seconds": waiting.as_secs(),
                        "lag_events_threshold": config.lag_events,
                        "lag_time_threshold": config.lag_time.to_string(),
                        "error": error,
                    }))
            };
            match (&mut lagging[i], over) {
                (None, true) => {
                    tracing::warn!(sink = %config.name, lag, "export: sink is lagging");
                    audit
                        .note(report("lagging", Outcome::Failure, now, lag))
                        .await;
                    lagging[i] = Some(Lagging {
                        since: now,
                        last_report: now,
                        max_lag: lag,
                    });
                    state.metrics.set_lagging(true);
                }
                (Some(l), true) => {
                    l.max_lag = l.max_lag.max(lag);
                    if now - l.last_report >= micros(config.lag_repeat.0) {
                        l.last_report = now;
                        let event = report("still_lagging", Outcome::Failure, l.since, l.max_lag);
                        audit.note(event).await;
                    }
                }
                (Some(l), false) => {
                    tracing::info!(sink = %config.name, "export: sink caught up");
                    let event = report("recovered", Outcome::Success, l.since, l.max_lag);
                    audit.note(event).await;
                    lagging[i] = None;
                    state.metrics.set_lagging(false);
                }
                (None, false) => {}
            }
        }
    }
}

/// A sink past its thresholds.
struct Lagging {
    since: i64,
    last_report: i64,
    max_lag: i64,
}

/// Exponential backoff with jitter: 200 ms doubling up to `max`, each wait
/// drawn from the upper half of the current step.
struct Backoff {
    step: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Backoff {
        Backoff {
            step: Duration::from_millis(200).min(max),
            max,
        }
    }

    fn next(&mut self) -> Duration {
        use rand::Rng;
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(rand::rngs::OsRng.r#gen::<f64>())
    }

    fn reset(&mut self) {
        self.step = Duration::from_millis(200).min(self.max);
    }
}

/// Sleeps for `duration`; true when `shutdown` came first.
async fn sleep(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        _ = shutdown.cancelled() => true,
    }
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_secs(2));
        let waits: Vec<Duration> = (0..8).map(|_| backoff.next()).collect();
        assert!(waits[0] >= Duration::from_millis(100) && waits[0] <= Duration::from_millis(200));
        for wait in &waits {
            assert!(*wait <= Duration::from_secs(2));
        }
        assert!(waits[7] >= Duration::from_secs(1));
        backoff.reset();
        assert!(backoff.next() <= Duration::from_millis(200));
    }
}
