//! `[[export]]`: the SIEM sinks the audit trail is copied to.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::{HumanDuration, clean, valid_target_name};

/// One `[[export]]`: a SIEM sink the audit trail is copied to, with its
/// own cursor in the store (see `src/export`).
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// Names the sink's cursor: renaming a sink exports the trail again.
    pub name: String,
    pub format: ExportFormat,
    pub kind: ExportKind,
    /// Events per delivery at most (one PutLogEvents call, one S3 object,
    /// one webhook POST).
    pub batch_max: usize,
    /// How long events may wait to fill a batch (S3: one object per this
    /// interval at most); 0 sends whatever is there at once.
    pub flush_interval: HumanDuration,
    /// Longest wait between retries of a failing delivery (backoff with jitter).
    pub retry_max: HumanDuration,
    /// `export.lagging` when this many events wait for the sink...
    pub lag_events: u64,
    /// ...or when events have waited this long without any delivery.
    pub lag_time: HumanDuration,
    /// While lagging, `export.lagging` again this often.
    pub lag_repeat: HumanDuration,
}

/// How exported events are written.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// The event as stored, with `seq`, `hash` and `prev_hash` (verifiable).
    #[default]
    Native,
    /// OCSF 1.3 (docs/ocsf.md), the native event in `raw_data`.
    Ocsf,
}

#[derive(Debug, Clone)]
pub enum ExportKind {
    Cloudwatch(CloudwatchSink),
    S3(S3Sink),
    Webhook(WebhookSink),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudwatchSink {
    /// Must exist (created with its retention and KMS key by Terraform).
    pub log_group: String,
    /// Created when missing.
    #[serde(default = "default_log_stream")]
    pub log_stream: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Sink {
    /// `s3://bucket/prefix`.
    pub url: Url,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSink {
    /// `https://...` (`http://` only to a loopback address).
    pub url: Url,
    /// Environment variable holding the HMAC-SHA256 signing secret.
    pub secret_env: String,
    /// PEM CA certificates trusted besides the public roots.
    pub ca_file: Option<PathBuf>,
    /// Extra headers whose values come from environment variables, e.g.
    /// `{ Authorization = "PAM_SPLUNK_HEC_AUTH" }` (`Splunk <token>`).
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
    #[serde(default = "default_webhook_timeout")]
    pub timeout: HumanDuration,
}

/// Keys every `[[export]]` takes, whatever its kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportCommon {
    #[serde(default)]
    format: ExportFormat,
    batch_max: Option<usize>,
    flush_interval: Option<HumanDuration>,
    #[serde(default = "default_retry_max")]
    retry_max: HumanDuration,
    #[serde(default = "default_lag_events")]
    lag_events: u64,
    lag_time: Option<HumanDuration>,
    #[serde(default = "default_lag_repeat")]
    lag_repeat: HumanDuration,
}

const EXPORT_COMMON_KEYS: [&str; 7] = [
    "format",
    "batch_max",
    "flush_interval",
    "retry_max",
    "lag_events",
    "lag_time",
    "lag_repeat",
];

fn default_log_stream() -> String {
    "pam-audit".to_owned()
}

fn default_webhook_timeout() -> HumanDuration {
    HumanDuration::secs(30)
}

fn default_retry_max() -> HumanDuration {
    HumanDuration::secs(60)
}

fn default_lag_events() -> u64 {
    10_000
}

fn default_lag_repeat() -> HumanDuration {
    HumanDuration::secs(3600)
}

impl ExportKind {
    pub fn name(&self) -> &'static str {
        match self {
            ExportKind::Cloudwatch(_) => "cloudwatch",
            ExportKind::S3(_) => "s3",
            ExportKind::Webhook(_) => "webhook",
        }
    }
}

pub(super) fn read_exports(
    value: Option<toml::Value>,
    errors: &mut Vec<String>,
) -> Vec<ExportConfig> {
    let Some(value) = value else {
        return Vec::new();
    };
    let toml::Value::Array(items) = value else {
        errors.push("export: expected [[export]] tables".into());
        return Vec::new();
    };
    let mut out: Vec<ExportConfig> = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let toml::Value::Table(mut table) = item else {
            errors.push(format!("export[{index}]: expected a table"));
            continue;
        };
        let name = match table.remove("name") {
            Some(toml::Value::String(s)) => s,
            _ => {
                errors.push(format!("export[{index}].name: missing or not a string"));
                continue;
            }
        };
        let label = format!("export[{index}] \"{name}\"");
        if !valid_target_name(&name) {
            errors.push(format!(
                "{label}.name: use letters, digits, '-', '_' and '.', starting with a letter or digit"
            ));
        }
        if out.iter().any(|e| e.name == name) {
            errors.push(format!("{label}.name: duplicate export name"));
        }
        let kind_name = match table.remove("kind") {
            Some(toml::Value::String(s)) => s,
            _ => {
                errors.push(format!(
                    "{label}.kind: missing (one of cloudwatch, s3, webhook)"
                ));
                continue;
            }
        };
        let mut common = toml::Table::new();
        for key in EXPORT_COMMON_KEYS {
            if let Some(v) = table.remove(key) {
                common.insert(key.to_owned(), v);
            }
        }
        let common: ExportCommon = match toml::Value::Table(common).try_into() {
            Ok(c) => c,
            Err(e) => {
                errors.push(format!("{label}: {}", clean(&e.to_string())));
                continue;
            }
        };
        let value = toml::Value::Table(table);
        let kind = match kind_name.as_str() {
            "cloudwatch" => value.try_into().map(ExportKind::Cloudwatch),
            "s3" => value.try_into().map(ExportKind::S3),
            "webhook" => value.try_into().map(ExportKind::Webhook),
            other => {
                errors.push(format!(
                    "{label}.kind: unknown kind {other:?} (one of cloudwatch, s3, webhook)"
                ));
                continue;
            }
        };
        let kind = match kind {
            Ok(kind) => kind,
            Err(e) => {
                errors.push(format!("{label}: {}", clean(&e.to_string())));
                continue;
            }
        };
        // Per kind: CloudWatch takes at most 10,000 events per call; an S3
        // object collects a few minutes of events; a webhook gets them at once.
        let (batch_default, flush_default) = match kind {
            ExportKind::Cloudwatch(_) => (10_000, HumanDuration::secs(0)),
            ExportKind::S3(_) => (10_000, HumanDuration::secs(300)),
            ExportKind::Webhook(_) => (1000, HumanDuration::secs(0)),
        };
        let flush_interval = common.flush_interval.unwrap_or(flush_default);
        let export = ExportConfig {
            name,
            format: common.format,
            batch_max: common.batch_max.unwrap_or(batch_default),
            flush_interval,
            retry_max: common.retry_max,
            lag_events: common.lag_events,
            lag_time: common
                .lag_time
                .unwrap_or(HumanDuration(flush_interval.0 + Duration::from_secs(300))),
            lag_repeat: common.lag_repeat,
            kind,
        };
        check_export(&label, &export, errors);
        out.push(export);
    }
    out
}

fn check_export(label: &str, export: &ExportConfig, errors: &mut Vec<String>) {
    if export.batch_max == 0 {
        errors.push(format!("{label}.batch_max: must be at least 1"));
    }
    if export.lag_events == 0 {
        errors.push(format!("{label}.lag_events: must be at least 1"));
    }
    if export.retry_max.0 < Duration::from_millis(100) {
        errors.push(format!("{label}.retry_max: must be at least 100ms"));
    }
    if export.lag_time.0 <= export.flush_interval.0 {
        errors.push(format!(
            "{label}.lag_time: must be longer than flush_interval ({})",
            export.flush_interval
        ));
    }
    if export.lag_repeat.0 < Duration::from_secs(1) {
        errors.push(format!("{label}.lag_repeat: must be at least 1s"));
    }
    match &export.kind {
        ExportKind::Cloudwatch(cw) => {
            if export.batch_max > 10_000 {
                errors.push(format!(
                    "{label}.batch_max: PutLogEvents takes at most 10000 events"
                ));
            }
            if cw.log_group.is_empty() || cw.log_stream.is_empty() {
                errors.push(format!(
                    "{label}: log_group and log_stream must not be empty"
                ));
            }
        }
        ExportKind::S3(s3) => {
            if s3.url.scheme() != "s3" || s3.url.host_str().is_none_or(str::is_empty) {
                errors.push(format!("{label}.url: expected s3://bucket/prefix"));
            }
        }
        ExportKind::Webhook(hook) => {
            let loopback = match hook.url.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            };
            if !(hook.url.scheme() == "https" || (hook.url.scheme() == "http" && loopback)) {
                errors.push(format!(
                    "{label}.url: must be https:// (http:// only to a loopback address)"
                ));
            }
            if hook.secret_env.is_empty() {
                errors.push(format!(
                    "{label}.secret_env: names the environment variable holding the signing secret"
                ));
            }
        }
    }
}
