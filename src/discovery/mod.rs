//! Targets: the configured ones and those discovered from AWS tags
//! (`[[discovery]]`), as one set every room reads ([`Targets`]).
//!
//! Each source (`sources.rs`) is read every `interval` and when the broker
//! gets SIGHUP; `resource.rs` turns a tagged resource into a target. The
//! merged set is published atomically: a configured target wins a name
//! clash (logged and audited); additions, changes and removals are audited
//! (`target.discovered|changed|removed`); a source that fails keeps its last
//! good targets, says why in `target.discovery_failed` and on `/readyz`.

pub mod check;
pub mod iam_policy;
pub mod resource;
pub mod sources;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::json;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::audit::Audit;
use crate::aws::Aws;
use crate::config::{DiscoveryConfig, TargetConfig};
use crate::domain::audit::{AuditEvent, EventKind, Outcome};
use resource::{Discovered, describe};

/// The targets users may reach: configured and discovered, swapped whole.
#[derive(Clone)]
pub struct Targets {
    inner: Arc<RwLock<Arc<Vec<TargetConfig>>>>,
}

impl Targets {
    pub fn new(targets: Vec<TargetConfig>) -> Self {
        Targets {
            inner: Arc::new(RwLock::new(Arc::new(targets))),
        }
    }

    /// The current set (cheap: an `Arc`).
    pub fn snapshot(&self) -> Arc<Vec<TargetConfig>> {
        crate::sync::read(&self.inner).clone()
    }

    /// The target named `name`, if any.
    pub fn get(&self, name: &str) -> Option<TargetConfig> {
        self.snapshot().iter().find(|t| t.name == name).cloned()
    }

    /// Swaps the set (benches only: the service publishes through discovery).
    #[doc(hidden)]
    pub fn replace_for_bench(&self, targets: Vec<TargetConfig>) {
        self.replace(targets);
    }

    fn replace(&self, targets: Vec<TargetConfig>) {
        let targets = Arc::new(targets);
        *crate::sync::write(&self.inner) = targets;
    }
}

/// What one source last did, for `/readyz` and the log.
#[derive(Debug, Clone, Default)]
pub struct SourceStatus {
    pub label: String,
    pub targets: usize,
    pub refused: usize,
    pub last_ok: Option<OffsetDateTime>,
    /// Why the last refresh failed (the targets of `last_ok` stay).
    pub error: Option<String>,
}

/// The discovery service; cheap to clone.
#[derive(Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

struct Inner {
    sources: Vec<DiscoveryConfig>,
    configured: Vec<TargetConfig>,
    aws: Aws,
    audit: Audit,
    actor: String,
    targets: Targets,
    state: tokio::sync::Mutex<State>,
    status: Mutex<Vec<SourceStatus>>,
    refresh: tokio::sync::watch::Sender<u64>,
    /// How many sources have finished their first refresh in [`Discovery::run`].
    first_round: tokio::sync::watch::Sender<usize>,
}

#[derive(Default)]
struct State {
    /// Per source (index into `sources`): its last good targets.
    good: BTreeMap<usize, Vec<(Discovered, &'static str)>>,
    /// Per source: resources refused and why (audited when new or changed).
    refused: BTreeMap<usize, BTreeMap<String, String>>,
    /// The last error recorded per source (recorded again when it changes).
    failed: BTreeMap<usize, String>,
    /// What is published, by name: its description and where it came from.
    published: BTreeMap<String, (serde_json::Value, String, &'static str)>,
    /// Names discovered that clash with a configured target (said once).
    clashes: BTreeSet<String>,
}

/// Resources read per source at most (the benchmark reads 5,000).
pub const LIMIT: usize = 20_000;

impl Discovery {
    pub fn new(
        sources: Vec<DiscoveryConfig>,
        configured: Vec<TargetConfig>,
        aws: Aws,
        audit: Audit,
        node: &str,
    ) -> Self {
        let targets = Targets::new(configured.clone());
        let status = sources
            .iter()
            .map(|s| SourceStatus {
                label: label(s),
                ..SourceStatus::default()
            })
            .collect();
        let (refresh, _) = tokio::sync::watch::channel(0);
        let (first_round, _) = tokio::sync::watch::channel(0);
        Discovery {
            inner: Arc::new(Inner {
                sources,
                configured,
                aws,
                audit,
                actor: format!("pam@{node}"),
                targets,
                state: tokio::sync::Mutex::new(State::default()),
                status: Mutex::new(status),
                refresh,
                first_round,
            }),
        }
    }

    /// The set the rooms read.
    pub fn targets(&self) -> Targets {
        self.inner.targets.clone()
    }

    /// One line per source for `/readyz` (empty without `[[discovery]]`).
    pub fn status(&self) -> Vec<SourceStatus> {
        crate::sync::lock(&self.inner.status).clone()
    }

    /// Asks every source to refresh now (SIGHUP).
    pub fn refresh_now(&self) {
        self.inner.refresh.send_modify(|n| *n += 1);
    }

    /// Reads every source once, in order (the first refresh, and tests).
    pub async fn refresh_all(&self) {
        for index in 0..self.inner.sources.len() {
            self.refresh(index).await;
        }
    }

    /// Waits until every source has finished the first refresh of
    /// [`Discovery::run`] (successful or not), so a caller that needs the
    /// first set does not read every source a second time.
    pub async fn first_round(&self) {
        let sources = self.inner.sources.len();
        let mut done = self.inner.first_round.subscribe();
        // The sender lives in `inner`, which `self` holds: never closed here.
        let _ = done.wait_for(|n| *n >= sources).await;
    }

    /// Runs the sources until `shutdown`: each refreshes at once, then every
    /// interval and on [`Discovery::refresh_now`].
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..self.inner.sources.len() {
            let this = self.clone();
            let shutdown = shutdown.clone();
            let mut refresh = self.inner.refresh.subscribe();
            tasks.spawn(async move {
                let interval = this.inner.sources[index].interval.0;
                let mut first = true;
                loop {
                    this.refresh(index).await;
                    if std::mem::take(&mut first) {
                        this.inner.first_round.send_modify(|n| *n += 1);
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(interval) => {}
                        changed = refresh.changed() => if changed.is_err() { return },
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Reads source `index` and publishes the merged set.
    async fn refresh(&self, index: usize) {
        let source = &self.inner.sources[index];
        let started = std::time::Instant::now();
        let read = sources::read(&self.inner.aws, source).await;
        let mut refreshed = None;
        let mut state = self.inner.state.lock().await;
        match read {
            Ok(found) => {
                let mut good = Vec::new();
                let mut refused = BTreeMap::new();
                for item in &found {
                    match resource::to_target(item, &source.tag) {
                        Ok(d) => {
                            if good
                                .iter()
                                .any(|(g, _): &(Discovered, _)| g.target.name == d.target.name)
                            {
                                refused.insert(
                                    d.resource.clone(),
                                    format!(
                                        "name {} is taken by another resource of this source",
                                        d.target.name
                                    ),
                                );
                            } else {
                                good.push((d, source.source.name()));
                            }
                        }
                        Err(why) => {
                            refused.insert(item.resource.clone(), why);
                        }
                    }
                }
                let before = state.refused.remove(&index).unwrap_or_default();
                for (resource, why) in &refused {
                    if before.get(resource) != Some(why) {
                        tracing::warn!(source = label(source), %resource, reason = %why, "discovered resource refused");
                        self.inner
                            .audit
                            .note(
                                AuditEvent::new(EventKind::TargetDiscovered, Outcome::Failure)
                                    .actor(&self.inner.actor)
                                    .details(json!({
                                        "source": source.source.name(),
                                        "resource": resource,
                                        "error": why,
                                    })),
                            )
                            .await;
                    }
                }
                let count = good.len();
                let refused_count = refused.len();
                state.refused.insert(index, refused);
                state.good.insert(index, good);
                state.failed.remove(&index);
                self.set_status(index, |s| {
                    s.targets = count;
                    s.refused = refused_count;
                    s.last_ok = Some(OffsetDateTime::now_utc());
                    s.error = None;
                });
                refreshed = Some((count, refused_count));
            }
            Err(error) => {
                let error = error.to_string();
                let kept = state.good.get(&index).map_or(0, Vec::len);
                tracing::warn!(source = label(source), %error, kept, "discovery failed; keeping the last good targets");
                if state.failed.get(&index) != Some(&error) {
                    let since = self
                        .status()
                        .get(index)
                        .and_then(|s| s.last_ok)
                        .map(|t| t.unix_timestamp());
                    self.inner
                        .audit
                        .note(
                            AuditEvent::new(EventKind::TargetDiscoveryFailed, Outcome::Failure)
                                .actor(&self.inner.actor)
                                .details(json!({
                                    "source": source.source.name(),
                                    "error": error,
                                    "kept": kept,
                                    "last_ok": since,
                                })),
                        )
                        .await;
                    state.failed.insert(index, error.clone());
                }
                self.set_status(index, |s| s.error = Some(error));
            }
        }
        self.publish(&mut state).await;
        // Logged once the differences are recorded.
        if let Some((count, refused_count)) = refreshed {
            tracing::info!(
                source = label(source),
                targets = count,
                refused = refused_count,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "discovery refreshed"
            );
        }
    }

    fn set_status(&self, index: usize, change: impl FnOnce(&mut SourceStatus)) {
        let mut status = crate::sync::lock(&self.inner.status);
        if let Some(s) = status.get_mut(index) {
            change(s);
        }
    }

    /// Merges configured and discovered targets, audits the differences
    /// from what was published, and swaps the set.
    async fn publish(&self, state: &mut State) {
        let configured: BTreeSet<&str> = self
            .inner
            .configured
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        let mut merged = self.inner.configured.clone();
        let mut next: BTreeMap<String, (serde_json::Value, String, &'static str)> = BTreeMap::new();
        let mut clashes = BTreeSet::new();
        for (discovered, source) in state.good.values().flatten() {
            let name = &discovered.target.name;
            if configured.contains(name.as_str()) {
                clashes.insert((name.clone(), discovered.resource.clone(), *source));
                continue;
            }
            if next.contains_key(name) {
                // Two sources found the same name: the first source keeps it.
                continue;
            }
            next.insert(
                name.clone(),
                (
                    describe(&discovered.target),
                    discovered.resource.clone(),
                    source,
                ),
            );
            merged.push(discovered.target.clone());
        }
        for (name, resource, source) in &clashes {
            if state.clashes.insert(name.clone()) {
                tracing::warn!(target_name = %name, %resource, "a discovered target has the name of a configured one; the configured target is kept");
                self.inner
                    .audit
                    .note(
                        AuditEvent::new(EventKind::TargetDiscovered, Outcome::Failure)
                            .actor(&self.inner.actor)
                            .target(name)
                            .details(json!({
                                "source": source,
                                "resource": resource,
                                "error": "a configured target has this name; the configured target is kept",
                            })),
                    )
                    .await;
            }
        }
        state
            .clashes
            .retain(|name| clashes.iter().any(|(n, _, _)| n == name));
        for (name, (description, resource, source)) in &next {
            let kind = match state.published.get(name) {
                None => EventKind::TargetDiscovered,
                Some((before, before_resource, _))
                    if before != description || before_resource != resource =>
                {
                    EventKind::TargetChanged
                }
                Some(_) => continue,
            };
            let mut details = json!({"source": source, "resource": resource});
            if let (Some(map), Some(desc)) = (details.as_object_mut(), description.as_object()) {
                for (k, v) in desc {
                    map.insert(k.clone(), v.clone());
                }
            }
            if kind == EventKind::TargetChanged
                && let Some((before, _, _)) = state.published.get(name)
            {
                details["before"] = before.clone();
            }
            self.inner
                .audit
                .note(
                    AuditEvent::new(kind, Outcome::Success)
                        .actor(&self.inner.actor)
                        .target(name)
                        .details(details),
                )
                .await;
        }
        for (name, (_, resource, source)) in &state.published {
            if !next.contains_key(name) {
                self.inner
                    .audit
                    .note(
                        AuditEvent::new(EventKind::TargetRemoved, Outcome::Success)
                            .actor(&self.inner.actor)
                            .target(name)
                            .details(json!({"source": source, "resource": resource})),
                    )
                    .await;
            }
        }
        state.published = next;
        self.inner.targets.replace(merged);
    }
}

/// `source` (and its clusters or tag when not the default), for messages.
fn label(source: &DiscoveryConfig) -> String {
    let mut out = source.source.name().to_owned();
    if !source.clusters.is_empty() {
        out.push_str(&format!(" {}", source.clusters.join(",")));
    }
    if source.tag != "pam:target" {
        out.push_str(&format!(" tag {}", source.tag));
    }
    out
}
