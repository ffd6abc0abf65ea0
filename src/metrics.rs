//! Process metrics in the Prometheus text format: plain atomics, no registry.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters and gauges every part of the broker updates. One per process.
#[derive(Debug, Default)]
pub struct Metrics {
    pub audit_appends: AtomicU64,
    pub audit_batches: AtomicU64,
    pub audit_errors: AtomicU64,
    pub audit_checkpoints: AtomicU64,
    pub logins_success: AtomicU64,
    pub logins_failure: AtomicU64,
    pub policy_permits: AtomicU64,
    pub policy_denials: AtomicU64,
    pub sessions_started: [AtomicU64; SESSION_KINDS.len()],
    pub sessions_active: [AtomicU64; SESSION_KINDS.len()],
    pub credentials_issued: AtomicU64,
    pub connection_errors: AtomicU64,
    pub http_requests: AtomicU64,
    /// `[[export]]` sinks, in configuration order.
    pub export_sinks: std::sync::Mutex<Vec<(String, Arc<SinkMetrics>)>>,
    /// SSH authentication rejections the broker slowed down (refused
    /// certificates; plain-key queries are answered at once).
    pub ssh_auth_delays: AtomicU64,
    /// Connections dropped for not authenticating within `server.auth_timeout`.
    pub auth_timeouts: AtomicU64,
    /// Connections refused by `server.max_unauthenticated_per_source`.
    pub unauthenticated_refused: AtomicU64,
    /// Failure events folded into a summary instead of recorded one by one.
    pub failures_aggregated: AtomicU64,
}

/// One export sink's gauges and counters.
#[derive(Debug, Default)]
pub struct SinkMetrics {
    lag: AtomicU64,
    cursor: AtomicU64,
    exported: AtomicU64,
    errors: AtomicU64,
    lagging: AtomicU64,
}

impl SinkMetrics {
    pub fn set_lag(&self, events: u64) {
        self.lag.store(events, Ordering::Relaxed);
    }

    pub fn set_cursor(&self, seq: i64) {
        self.cursor
            .store(u64::try_from(seq).unwrap_or(0), Ordering::Relaxed);
    }

    pub fn add_exported(&self, events: u64) {
        self.exported.fetch_add(events, Ordering::Relaxed);
    }

    pub fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_lagging(&self, lagging: bool) {
        self.lagging.store(u64::from(lagging), Ordering::Relaxed);
    }
}

/// Session kinds, in the order of the per-kind arrays above.
pub const SESSION_KINDS: [&str; 3] = ["ssh", "postgres", "ecs"];

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Marks a session of `kind` as started; the guard marks it ended on drop.
    pub fn session(self: &Arc<Self>, kind: &str) -> SessionGauge {
        let index = SESSION_KINDS.iter().position(|k| *k == kind).unwrap_or(0);
        Self::inc(&self.sessions_started[index]);
        Self::inc(&self.sessions_active[index]);
        SessionGauge {
            metrics: Arc::clone(self),
            index,
        }
    }

    /// The metrics of export sink `name` (created on first use).
    pub fn export_sink(&self, name: &str) -> Arc<SinkMetrics> {
        let mut sinks = crate::sync::lock(&self.export_sinks);
        if let Some((_, m)) = sinks.iter().find(|(n, _)| n == name) {
            return m.clone();
        }
        let metrics = Arc::new(SinkMetrics::default());
        sinks.push((name.to_owned(), metrics.clone()));
        metrics
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            &mut out,
            "pam_audit_appends_total",
            "Audit events appended to the chain.",
            get(&self.audit_appends),
        );
        counter(
            &mut out,
            "pam_audit_batches_total",
            "Audit append transactions.",
            get(&self.audit_batches),
        );
        counter(
            &mut out,
            "pam_audit_errors_total",
            "Audit appends that failed (callers were refused when fail-closed).",
            get(&self.audit_errors),
        );
        counter(
            &mut out,
            "pam_audit_checkpoints_total",
            "Signed audit checkpoints written.",
            get(&self.audit_checkpoints),
        );
        let _ = writeln!(out, "# HELP pam_logins_total Login attempts by outcome.");
        let _ = writeln!(out, "# TYPE pam_logins_total counter");
        let _ = writeln!(
            out,
            "pam_logins_total{{outcome=\"success\"}} {}",
            get(&self.logins_success)
        );
        let _ = writeln!(
            out,
            "pam_logins_total{{outcome=\"failure\"}} {}",
            get(&self.logins_failure)
        );
        let _ = writeln!(out, "# HELP pam_policy_decisions_total Policy decisions.");
        let _ = writeln!(out, "# TYPE pam_policy_decisions_total counter");
        let _ = writeln!(
            out,
            "pam_policy_decisions_total{{decision=\"allow\"}} {}",
            get(&self.policy_permits)
        );
        let _ = writeln!(
            out,
            "pam_policy_decisions_total{{decision=\"deny\"}} {}",
            get(&self.policy_denials)
        );
        let _ = writeln!(out, "# HELP pam_sessions_total Sessions started, by kind.");
        let _ = writeln!(out, "# TYPE pam_sessions_total counter");
        for (i, kind) in SESSION_KINDS.iter().enumerate() {
            let _ = writeln!(
                out,
                "pam_sessions_total{{kind=\"{kind}\"}} {}",
                get(&self.sessions_started[i])
            );
        }
        let _ = writeln!(
            out,
            "# HELP pam_sessions_active Sessions running now, by kind."
        );
        let _ = writeln!(out, "# TYPE pam_sessions_active gauge");
        for (i, kind) in SESSION_KINDS.iter().enumerate() {
            let _ = writeln!(
                out,
                "pam_sessions_active{{kind=\"{kind}\"}} {}",
                get(&self.sessions_active[i])
            );
        }
        counter(
            &mut out,
            "pam_credentials_issued_total",
            "Credentials issued (certificates, STS credentials, tokens).",
            get(&self.credentials_issued),
        );
        counter(
            &mut out,
            "pam_connection_errors_total",
            "Connections that ended with an error.",
            get(&self.connection_errors),
        );
        counter(
            &mut out,
            "pam_http_requests_total",
            "HTTP requests served.",
            get(&self.http_requests),
        );
        counter(
            &mut out,
            "pam_ssh_auth_delays_total",
            "SSH authentication rejections delayed by the broker.",
            get(&self.ssh_auth_delays),
        );
        counter(
            &mut out,
            "pam_auth_timeouts_total",
            "Connections dropped for not authenticating within server.auth_timeout.",
            get(&self.auth_timeouts),
        );
        counter(
            &mut out,
            "pam_unauthenticated_refused_total",
            "Connections refused by server.max_unauthenticated_per_source.",
            get(&self.unauthenticated_refused),
        );
        counter(
            &mut out,
            "pam_failures_aggregated_total",
            "Failure events recorded inside a summary event instead of one by one.",
            get(&self.failures_aggregated),
        );
        // The runtime's live tasks: a leak of spawned work shows here
        // (bench/soak.sh plots it).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let _ = writeln!(
                out,
                "# HELP pam_tasks_alive Tasks alive in the broker's async runtime."
            );
            let _ = writeln!(out, "# TYPE pam_tasks_alive gauge");
            let _ = writeln!(
                out,
                "pam_tasks_alive {}",
                runtime.metrics().num_alive_tasks()
            );
        }
        render_export(&mut out, self);
        out
    }
}

/// Decrements the active-session gauge when the session ends.
pub struct SessionGauge {
    metrics: Arc<Metrics>,
    index: usize,
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        self.metrics.sessions_active[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    let _ = writeln!(out, "{name} {value}");
}

/// `pam_export_*{sink="..."}` (sink names are `[A-Za-z0-9._-]`, no escaping needed).
fn render_export(out: &mut String, metrics: &Metrics) {
    let sinks = crate::sync::lock(&metrics.export_sinks).clone();
    if sinks.is_empty() {
        return;
    }
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    type Field = fn(&SinkMetrics) -> &AtomicU64;
    let families: [(&str, &str, &str, Field); 5] = [
        (
            "pam_export_lag_events",
            "gauge",
            "Committed audit events the sink has not acknowledged yet.",
            |m| &m.lag,
        ),
        (
            "pam_export_cursor_seq",
            "gauge",
            "The last seq the sink acknowledged.",
            |m| &m.cursor,
        ),
        (
            "pam_export_events_total",
            "counter",
            "Audit events delivered to the sink (by this broker).",
            |m| &m.exported,
        ),
        (
            "pam_export_errors_total",
            "counter",
            "Failed deliveries to the sink.",
            |m| &m.errors,
        ),
        (
            "pam_export_lagging",
            "gauge",
            "1 while the sink is past its lag thresholds (export.lagging).",
            |m| &m.lagging,
        ),
    ];
    for (name, kind, help, field) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (sink, m) in &sinks {
            let _ = writeln!(out, "{name}{{sink=\"{sink}\"}} {}", get(field(m)));
        }
    }
}
