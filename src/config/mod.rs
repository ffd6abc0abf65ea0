//! The broker's configuration: one typed tree, read from TOML and overridden by
//! `PAM_SECTION__KEY` environment variables, validated all at once.
//!
//! Every problem is reported together, each with the key's dotted name, so an
//! operator fixes a file in one pass. Secrets never live in the file: the file
//! names an environment variable or a file that holds them, and they are loaded
//! into [`secrecy::SecretString`], which never prints.

mod discovery;
mod export;
mod sections;
mod targets;
mod values;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

pub use crate::domain::duration::HumanDuration;
pub use discovery::*;
pub use export::*;
pub use sections::*;
pub use targets::*;
pub use values::*;

/// The whole configuration of `pam serve`.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub oidc: OidcConfig,
    pub policy: PolicyConfig,
    pub session: SessionConfig,
    pub ssh: SshConfig,
    pub audit: AuditConfig,
    pub login: LoginConfig,
    pub aws: AwsConfig,
    pub targets: Vec<TargetConfig>,
    /// `[[export]]`: SIEM sinks the audit trail is copied to.
    pub exports: Vec<ExportConfig>,
    /// `[[discovery]]`: AWS resources tagged as targets, read periodically.
    pub discovery: Vec<DiscoveryConfig>,
    /// True for `pam serve --dev`: loopback only, cleartext PostgreSQL on
    /// loopback allowed, insecure cookies allowed.
    pub dev: bool,
}

/// All configuration problems found in one pass.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Reads `path` (TOML) and applies `PAM_SECTION__KEY` overrides from `env`.
    pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(vec![format!("reading config file {}: {e}", path.display())])
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            ConfigError(vec![format!(
                "parsing config file {}: {}",
                path.display(),
                e.to_string().trim()
            )])
        })?;
        Self::from_parts(table, env, false)
    }

    /// The `--dev` configuration: no file, everything under `data_dir`, loopback listeners.
    pub fn dev(data_dir: &Path, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut table = toml::Table::new();
        let mut server = toml::Table::new();
        server.insert(
            "data_dir".into(),
            toml::Value::String(data_dir.display().to_string()),
        );
        table.insert("server".into(), toml::Value::Table(server));
        Self::from_parts(table, env, true)
    }

    /// Builds a config from an already parsed table (tests and `--dev`).
    pub fn from_parts(
        mut table: toml::Table,
        env: &HashMap<String, String>,
        dev: bool,
    ) -> Result<Self, ConfigError> {
        let mut errors = Vec::new();
        let targets_value = table.remove("target");
        let exports_value = table.remove("export");
        let discovery_value = table.remove("discovery");
        let mut sections: BTreeMap<String, BTreeMap<String, Source>> = BTreeMap::new();
        for (name, value) in table {
            match value {
                toml::Value::Table(t) => {
                    let entry = sections.entry(name).or_default();
                    for (k, v) in t {
                        entry.insert(k, Source::File(v));
                    }
                }
                _ => errors.push(format!("{name}: expected a [{name}] section")),
            }
        }
        for (var, raw) in env {
            let Some(rest) = var.strip_prefix("PAM_") else {
                continue;
            };
            let Some((section, key)) = rest.split_once("__") else {
                continue;
            };
            sections
                .entry(section.to_ascii_lowercase())
                .or_default()
                .insert(
                    key.to_ascii_lowercase(),
                    Source::Env {
                        var: var.clone(),
                        raw: raw.clone(),
                    },
                );
        }

        let empty = BTreeMap::new();
        let get = |name: &str| sections.get(name).unwrap_or(&empty);
        let server = ServerConfig::read("server", get("server"), &mut errors);
        let oidc = OidcConfig::read("oidc", get("oidc"), &mut errors);
        let policy = PolicyConfig::read("policy", get("policy"), &mut errors);
        let session = SessionConfig::read("session", get("session"), &mut errors);
        let ssh = SshConfig::read("ssh", get("ssh"), &mut errors);
        let audit = AuditConfig::read("audit", get("audit"), &mut errors);
        let login = LoginConfig::read("login", get("login"), &mut errors);
        let aws = AwsConfig::read("aws", get("aws"), &mut errors);
        for (name, entries) in &sections {
            if ![
                "server", "oidc", "policy", "session", "ssh", "audit", "login", "aws",
            ]
            .contains(&name.as_str())
            {
                let origin = entries
                    .values()
                    .next()
                    .map(Source::origin)
                    .unwrap_or_default();
                errors.push(format!("{name} ({origin}): unknown section"));
            }
        }
        let targets = read_targets(targets_value, &mut errors);
        let exports = read_exports(exports_value, &mut errors);
        let discovery = discovery::read_discovery(discovery_value, &mut errors);

        let mut config = Config {
            server,
            oidc,
            policy,
            session,
            ssh,
            audit,
            login,
            aws,
            targets,
            exports,
            discovery,
            dev,
        };
        config.check(&mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(errors))
        }
    }

    /// Cross-field checks, after every key has been read.
    fn check(&mut self, errors: &mut Vec<String>) {
        if self.dev {
            for (key, addr) in [
                ("server.http_listen", self.server.http_listen),
                ("server.ssh_listen", self.server.ssh_listen),
                ("server.postgres_listen", self.server.postgres_listen),
            ] {
                if !addr.ip().is_loopback() {
                    errors.push(format!("{key}: --dev listens on loopback only, got {addr}"));
                }
            }
        }
        if !matches!(self.server.public_url.scheme(), "http" | "https") {
            errors.push("server.public_url: must be an http or https URL".into());
        }
        if let Some(url) = &self.server.database_url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            errors.push("server.database_url: must start with sqlite: or postgres://".into());
        }
        if self.session.token_ttl.0 < Duration::from_secs(60) {
            errors.push("session.token_ttl: must be at least 1m".into());
        }
        if self.session.idle_timeout.0.is_zero() || self.session.max_duration.0.is_zero() {
            errors.push("session.idle_timeout / session.max_duration: must not be zero".into());
        }
        if self.server.auth_timeout.0.is_zero() {
            errors.push("server.auth_timeout: must not be zero".into());
        }
        if self.server.max_unauthenticated_per_source == 0 {
            errors.push("server.max_unauthenticated_per_source: must be at least 1".into());
        }
        for (key, chosen, known) in [
            ("ssh.kex", &self.ssh.kex, SSH_KEX),
            ("ssh.ciphers", &self.ssh.ciphers, SSH_CIPHERS),
            ("ssh.macs", &self.ssh.macs, SSH_MACS),
            (
                "ssh.host_key_algorithms",
                &self.ssh.host_key_algorithms,
                SSH_HOST_KEY,
            ),
            ("ssh.compression", &self.ssh.compression, SSH_COMPRESSION),
        ] {
            if chosen.is_empty() {
                errors.push(format!("{key}: must name at least one algorithm"));
            }
            for name in chosen {
                if !known.contains(&name.as_str()) {
                    errors.push(format!(
                        "{key}: {name:?} is not supported (one of {})",
                        known.join(", ")
                    ));
                }
            }
        }
        if self.audit.checkpoint_every == 0 {
            errors.push("audit.checkpoint_every: must be at least 1".into());
        }
        if self.audit.batch_max == 0 || self.audit.queue == 0 {
            errors.push("audit.batch_max / audit.queue: must be at least 1".into());
        }
        if self.oidc.issuer.is_some()
            && self.oidc.client_secret_env.is_none()
            && self.oidc.client_secret_file.is_none()
        {
            errors.push(
                "oidc: a confidential client needs client_secret_env or client_secret_file".into(),
            );
        }
    }

    /// The database the broker stores its state in.
    pub fn database_url(&self) -> String {
        match &self.server.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.server.data_dir.join("pam.db").display()),
        }
    }

    /// Where key material is read from and generated into.
    pub fn keys_dir(&self) -> PathBuf {
        self.server
            .keys_dir
            .clone()
            .unwrap_or_else(|| self.server.data_dir.join("keys"))
    }

    pub fn recordings_dir(&self) -> PathBuf {
        self.server.data_dir.join("recordings")
    }

    pub fn node_name(&self) -> String {
        if let Some(name) = &self.server.node_name {
            return name.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "pam".to_owned())
    }

    /// Where users reach the SSH listener.
    pub fn ssh_public_addr(&self, bound: SocketAddr) -> String {
        self.server.ssh_public_addr.clone().unwrap_or_else(|| {
            let host = self.server.public_url.host_str().unwrap_or("127.0.0.1");
            format!("{host}:{}", bound.port())
        })
    }

    /// Where users reach the PostgreSQL listener.
    pub fn postgres_public_addr(&self, bound: SocketAddr) -> String {
        self.server.postgres_public_addr.clone().unwrap_or_else(|| {
            let host = self.server.public_url.host_str().unwrap_or("127.0.0.1");
            format!("{host}:{}", bound.port())
        })
    }

    /// Whether any target or export calls AWS (so the broker needs a region
    /// and credentials).
    pub fn uses_aws(&self) -> bool {
        let target_uses = |t: &TargetConfig| match &t.kind {
            TargetKind::Aws(_) | TargetKind::Ecs(_) => true,
            TargetKind::Ssh(ssh) => ssh.credential != Credential::BrokerCa || ssh.via.is_some(),
            TargetKind::Postgres(pg) => pg.credential != Credential::BrokerCa || pg.via.is_some(),
        };
        self.targets.iter().any(target_uses)
            || !self.discovery.is_empty()
            || self
                .exports
                .iter()
                .any(|e| !matches!(e.kind, ExportKind::Webhook(_)))
    }

    pub fn target(&self, name: &str) -> Option<&TargetConfig> {
        self.targets.iter().find(|t| t.name == name)
    }
}

/// Where a configuration value came from, so errors can point at it.
#[derive(Debug, Clone)]
enum Source {
    File(toml::Value),
    Env { var: String, raw: String },
}

impl Source {
    fn origin(&self) -> String {
        match self {
            Source::File(_) => "config file".to_owned(),
            Source::Env { var, .. } => format!("env {var}"),
        }
    }

    /// Environment values are strings; when the key wants a number, a
    /// boolean or a list, the value is read as a TOML literal instead.
    fn decode<T: DeserializeOwned>(&self) -> Result<T, String> {
        match self {
            Source::File(value) => value
                .clone()
                .try_into::<T>()
                .map_err(|e| clean(&e.to_string())),
            Source::Env { raw, .. } => {
                let as_string = toml::Value::String(raw.clone()).try_into::<T>();
                match as_string {
                    Ok(v) => Ok(v),
                    Err(first) => {
                        let literal: Result<toml::Table, _> = toml::from_str(&format!("v = {raw}"));
                        match literal.ok().and_then(|mut t| t.remove("v")) {
                            Some(value) => value.try_into::<T>().map_err(|e| clean(&e.to_string())),
                            None => Err(clean(&first.to_string())),
                        }
                    }
                }
            }
        }
    }
}

fn clean(message: &str) -> String {
    message.trim().replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let table: toml::Table = toml::from_str(text).unwrap();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_parts(table, &env, false)
    }

    #[test]
    fn discovery_sources_have_defaults_and_are_checked() {
        let config = load(
            r#"
            [[discovery]]
            source = "iam-roles"
            [[discovery]]
            source = "ecs-services"
            clusters = ["prod"]
            tag = "pam:target-x"
            interval = "30s"
            "#,
            &[],
        )
        .unwrap();
        let [iam, ecs] = &config.discovery[..] else {
            panic!("two sources")
        };
        assert_eq!(iam.source, DiscoverySource::IamRoles);
        assert_eq!(
            (iam.tag.as_str(), iam.interval.0.as_secs()),
            ("pam:target", 300)
        );
        assert_eq!(ecs.clusters, ["prod"]);
        assert_eq!(ecs.interval.0.as_secs(), 30);
        let err = load(
            r#"
            [[discovery]]
            source = "ecs-services"
            [[discovery]]
            source = "rds"
            clusters = ["x"]
            [[discovery]]
            source = "s3"
            [[discovery]]
            source = "ec2-ssm"
            interval = "0s"
            colour = "blue"
            "#,
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("discovery[0] \"ecs-services\".clusters"),
            "{err}"
        );
        assert!(err.contains("discovery[1] \"rds\".clusters"), "{err}");
        assert!(
            err.contains("discovery[2]") && err.contains("iam-roles"),
            "{err}"
        );
        assert!(
            err.contains("discovery[3]") && err.contains("colour"),
            "{err}"
        );
    }

    #[test]
    fn defaults_apply_and_env_overrides_win() {
        let config = load(
            "[server]\nhttp_listen = \"127.0.0.1:9999\"\n[session]\nidle_timeout = \"5m\"\n",
            &[
                ("PAM_SERVER__HTTP_LISTEN", "127.0.0.1:7777"),
                ("PAM_AUDIT__FAIL_CLOSED", "false"),
                ("PAM_OIDC__CLIENT_ID", "12345"),
                ("PAM_REASON", "ignored: no double underscore"),
            ],
        )
        .unwrap();
        assert_eq!(config.server.http_listen.port(), 7777);
        assert_eq!(config.session.idle_timeout.0.as_secs(), 300);
        assert_eq!(config.session.max_duration.0.as_secs(), 8 * 3600);
        assert!(!config.audit.fail_closed);
        assert_eq!(config.oidc.client_id, "12345");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let err = load(
            r#"
            [server]
            http_listen = "not an address"
            colour = "blue"
            [session]
            idle_timeout = "soon"
            [nonsense]
            x = 1
            [[target]]
            name = "db"
            kind = "postgres"
            address = "db:5432"
            database = "orders"
            credential = { from = "secretsmanager", secret_id = "x" }
            typo = 1
            [[target]]
            name = "bad name!"
            kind = "aws"
            role_arn = "arn:aws:iam::1:role/R"
            max_duration = "13h"
            "#,
            &[("PAM_AUDIT__FAIL_CLOSED", "maybe")],
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "server.http_listen",
            "server.colour (config file): unknown key",
            "session.idle_timeout",
            "nonsense",
            "target[0] \"db\"",
            "typo",
            "target[1] \"bad name!\".name",
            "max_duration",
            "audit.fail_closed (env PAM_AUDIT__FAIL_CLOSED)",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert_eq!(err.0.len(), 8, "{text}");
    }

    #[test]
    fn targets_are_typed() {
        let config = load(
            r#"
            [[target]]
            name = "bastion-dev"
            kind = "ssh"
            address = "10.0.1.5:22"
            host_key = "ssh-ed25519 AAAA"
            login = "ec2-user"
            tags = { env = "dev" }
            [[target]]
            name = "orders-prod"
            kind = "postgres"
            address = "orders.example:5432"
            database = "orders"
            credential = { from = "rds-iam", db_user = "pam_ro" }
            tags = { env = "prod" }
            "#,
            &[],
        )
        .unwrap();
        assert_eq!(config.targets.len(), 2);
        let TargetKind::Ssh(ssh) = &config.targets[0].kind else {
            panic!("ssh")
        };
        assert_eq!(ssh.credential, Credential::BrokerCa);
        assert_eq!(config.targets[0].tags["env"], "dev");
        let TargetKind::Postgres(pg) = &config.targets[1].kind else {
            panic!("pg")
        };
        assert_eq!(pg.tls, TlsMode::VerifyFull);
        assert_eq!(
            pg.credential,
            Credential::RdsIam {
                db_user: "pam_ro".into()
            }
        );
    }

    #[test]
    fn export_sinks_are_typed_with_per_kind_defaults_and_checked() {
        let config = load(
            r#"
            [[export]]
            name = "cw"
            kind = "cloudwatch"
            log_group = "/pam/audit"
            [[export]]
            name = "lake"
            kind = "s3"
            url = "s3://bucket/audit/prod"
            format = "ocsf"
            [[export]]
            name = "siem"
            kind = "webhook"
            url = "https://siem.example.com/ingest"
            secret_env = "PAM_SIEM_SECRET"
            headers_env = { Authorization = "PAM_SIEM_AUTH" }
            "#,
            &[],
        )
        .unwrap();
        let [cw, lake, siem] = &config.exports[..] else {
            panic!("three sinks")
        };
        let ExportKind::Cloudwatch(c) = &cw.kind else {
            panic!("cloudwatch")
        };
        assert_eq!(c.log_stream, "pam-audit");
        assert_eq!((cw.batch_max, cw.flush_interval.0.as_secs()), (10_000, 0));
        assert_eq!(lake.format, ExportFormat::Ocsf);
        assert_eq!(lake.flush_interval.0.as_secs(), 300);
        assert_eq!(lake.lag_time.0.as_secs(), 600, "flush_interval + 5m");
        assert_eq!(siem.batch_max, 1000);
        assert_eq!(siem.format, ExportFormat::Native);

        let err = load(
            r#"
            [[export]]
            name = "a"
            kind = "webhook"
            url = "http://siem.example.com/"
            secret_env = "X"
            [[export]]
            name = "a"
            kind = "s3"
            url = "https://bucket/"
            [[export]]
            name = "b"
            kind = "cloudwatch"
            log_group = "g"
            batch_max = 20000
            colour = "blue"
            [[export]]
            name = "c"
            kind = "kafka"
            [[export]]
            name = "d"
            kind = "s3"
            url = "s3://b/p"
            flush_interval = "10m"
            lag_time = "5m"
            "#,
            &[],
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "export[0] \"a\".url: must be https://",
            "export[1] \"a\".name: duplicate",
            "export[1] \"a\".url: expected s3://",
            "colour",
            "unknown kind \"kafka\"",
            "export[4] \"d\".lag_time",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        // A loopback collector may be plain HTTP.
        load(
            "[[export]]\nname = \"local\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:8686/\"\nsecret_env = \"X\"\n",
            &[],
        )
        .unwrap();
    }

    #[test]
    fn secrets_never_print() {
        let secret = SecretString::from("hunter2".to_owned());
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
