//! The broker's configuration: one typed tree, read from TOML and overridden by
//! `PAM_SECTION__KEY` environment variables, validated all at once.
//!
//! Every problem is reported together, each with the key's dotted name, so an
//! operator fixes a file in one pass. Secrets never live in the file: the file
//! names an environment variable or a file that holds them, and they are loaded
//! into [`secrecy::SecretString`], which never prints.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::Url;

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
    /// True for `pam serve --dev`: loopback only, cleartext PostgreSQL on
    /// loopback allowed, insecure cookies allowed.
    pub dev: bool,
}

/// All configuration problems found in one pass.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

/// An IP network such as `10.0.0.0/16` (a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(ipnet::IpNet);

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let net = match text.parse::<std::net::IpAddr>() {
            Ok(addr) => ipnet::IpNet::from(addr.to_canonical()),
            Err(_) => text
                .parse::<ipnet::IpNet>()
                .map_err(|_| format!("{text:?} is not an IP address or network"))?,
        };
        Ok(Cidr(net))
    }

    /// Whether `ip` is in this network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Cidr::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A duration written like `15m`, `8h`, `1h30m`, `90s` or `500ms`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

/// A size in bytes written like `10GiB`, `512MiB`, `64KiB`, `1GB` or `4096`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

macro_rules! section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $default:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        pub struct $name { $( $(#[doc = $doc])* pub $field: $ty, )* }

        impl Default for $name {
            fn default() -> Self { Self { $( $field: $default, )* } }
        }

        impl $name {
            /// Reads this section key by key so that every bad key is reported.
            fn read(section: &str, entries: &BTreeMap<String, Source>, errors: &mut Vec<String>) -> Self {
                let mut out = Self::default();
                for (key, source) in entries {
                    match key.as_str() {
                        $( stringify!($field) => match source.decode::<$ty>() {
                            Ok(value) => out.$field = value,
                            Err(e) => errors.push(format!("{section}.{key} ({}): {e}", source.origin())),
                        }, )*
                        _ => errors.push(format!("{section}.{key} ({}): unknown key", source.origin())),
                    }
                }
                out
            }
        }
    };
}

section! {
    /// `[server]`: listeners, storage and key material.
    pub struct ServerConfig {
        /// The URL users and the IdP reach the broker's HTTP room at.
        public_url: Url = Url::parse("http://127.0.0.1:8080").expect("static url"),
        http_listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080)),
        ssh_listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 2222)),
        postgres_listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 6432)),
        /// Keys (unless `keys_dir` is set), recordings and the SQLite database.
        data_dir: PathBuf = PathBuf::from("./pam-data"),
        /// `sqlite://PATH` or `postgres://...`; defaults to `data_dir/pam.db`.
        database_url: Option<String> = None,
        /// Where key material lives; brokers sharing one database share this.
        keys_dir: Option<PathBuf> = None,
        /// PEM certificate chain for TLS on the PostgreSQL listener; generated when absent.
        tls_cert_file: Option<PathBuf> = None,
        tls_key_file: Option<PathBuf> = None,
        /// How long in-flight work may take to finish after SIGTERM.
        shutdown_grace: HumanDuration = HumanDuration::secs(20),
        /// Upper bound on concurrent connections per listener.
        max_connections: usize = 10_000,
        /// Name of this broker process in a fleet; defaults to the host name.
        node_name: Option<String> = None,
        /// `host:port` users reach the SSH listener at (behind a load
        /// balancer); defaults to public_url's host and ssh_listen's port.
        ssh_public_addr: Option<String> = None,
        /// `host:port` users reach the PostgreSQL listener at.
        postgres_public_addr: Option<String> = None,
        /// Networks of the load balancers in front of the HTTP room (e.g. the
        /// ALB's subnets): from them, the client address is read from
        /// `X-Forwarded-For`. Empty: the header is ignored.
        trusted_proxies: Vec<Cidr> = Vec::new(),
        /// An SSH or PostgreSQL connection that has not authenticated after
        /// this long is dropped (the broker token, for PostgreSQL).
        auth_timeout: HumanDuration = HumanDuration::secs(30),
        /// Connections from one source address that may be waiting to
        /// authenticate at once (SSH and PostgreSQL together); more are refused.
        max_unauthenticated_per_source: usize = 16,
        /// Failed attempts from one source recorded one by one per minute and
        /// kind of event; the rest of that minute become one summary event
        /// with their count and what they tried.
        failure_events_per_minute: u32 = 10,
    }
}

section! {
    /// `[ssh]`: the algorithms the SSH listener offers, most preferred first.
    /// The defaults follow ssh-audit's hardening guide (no encrypt-and-MAC
    /// MACs, no 2048-bit DH, no ChaCha20-Poly1305 for peers without strict
    /// key exchange), with the post-quantum hybrid first.
    pub struct SshConfig {
        kex: Vec<String> = names(SSH_KEX_DEFAULT),
        ciphers: Vec<String> = names(SSH_CIPHERS_DEFAULT),
        macs: Vec<String> = names(SSH_MACS_DEFAULT),
        host_key_algorithms: Vec<String> = names(SSH_HOST_KEY_DEFAULT),
        compression: Vec<String> = names(SSH_COMPRESSION_DEFAULT),
    }
}

/// Key exchange algorithms the SSH listener can offer (the strict-kex and
/// ext-info markers are always added).
pub const SSH_KEX: &[&str] = &[
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "diffie-hellman-group18-sha512",
    "diffie-hellman-group17-sha512",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group15-sha512",
    "diffie-hellman-group-exchange-sha256",
    "diffie-hellman-group14-sha256",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
];
const SSH_KEX_DEFAULT: &[&str] = &[
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "diffie-hellman-group18-sha512",
    "diffie-hellman-group-exchange-sha256",
    "diffie-hellman-group16-sha512",
];
/// Ciphers the SSH listener can offer.
pub const SSH_CIPHERS: &[&str] = &[
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
    "chacha20-poly1305@openssh.com",
];
const SSH_CIPHERS_DEFAULT: &[&str] = &[
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
];
/// MACs the SSH listener can offer (GCM ciphers carry their own).
pub const SSH_MACS: &[&str] = &[
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512",
    "hmac-sha2-256",
];
const SSH_MACS_DEFAULT: &[&str] = &[
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256-etm@openssh.com",
];
/// Host key algorithms: the broker's host key is Ed25519.
pub const SSH_HOST_KEY: &[&str] = &["ssh-ed25519"];
const SSH_HOST_KEY_DEFAULT: &[&str] = &["ssh-ed25519"];
/// Compression: `zlib@openssh.com` starts only after authentication.
pub const SSH_COMPRESSION: &[&str] = &["none", "zlib@openssh.com"];
const SSH_COMPRESSION_DEFAULT: &[&str] = &["none", "zlib@openssh.com"];

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

section! {
    /// `[oidc]`: the company IdP the broker is a relying party of.
    pub struct OidcConfig {
        issuer: Option<Url> = None,
        client_id: String = "pam".to_owned(),
        /// Environment variable holding the client secret.
        client_secret_env: Option<String> = Some("PAM_OIDC_CLIENT_SECRET".to_owned()),
        /// File holding the client secret (e.g. a mounted Secrets Manager value).
        client_secret_file: Option<PathBuf> = None,
        groups_claim: String = "groups".to_owned(),
        require_mfa: bool = false,
        /// `amr` values that count as a second factor.
        mfa_methods: Vec<String> = ["mfa", "otp", "hwk", "swk", "fido", "webauthn", "sms", "totp"]
            .into_iter().map(str::to_owned).collect(),
        scopes: Vec<String> = ["openid", "email", "profile", "groups"]
            .into_iter().map(str::to_owned).collect(),
        /// Clock skew tolerated on `exp`/`iat`.
        leeway: HumanDuration = HumanDuration::secs(60),
    }
}

section! {
    /// `[policy]`: where the Cedar policies live.
    pub struct PolicyConfig {
        dir: PathBuf = PathBuf::from("policies"),
        /// Poll interval for file changes (SIGHUP reloads at once).
        watch_interval: HumanDuration = HumanDuration::secs(2),
    }
}

section! {
    /// `[session]`: lifetimes of broker sessions and of brokered sessions.
    pub struct SessionConfig {
        token_ttl: HumanDuration = HumanDuration::secs(8 * 3600),
        idle_timeout: HumanDuration = HumanDuration::secs(15 * 60),
        max_duration: HumanDuration = HumanDuration::secs(8 * 3600),
        /// Record terminal output of shells and commands (asciicast v2). Turning
        /// it off loses the evidence PCI DSS 10 asks for: benchmarks only.
        record: bool = true,
        /// Record keystrokes of interactive shells (commands of exec channels are always recorded).
        record_input: bool = false,
        /// Validity of the certificates the broker signs for targets.
        target_cert_ttl: HumanDuration = HumanDuration::secs(5 * 60),
        /// Warning given to users this long before a limit ends their session.
        warn_before: HumanDuration = HumanDuration::secs(60),
        /// Lifetime of a web view login (the browser cookie); never longer than `token_ttl`.
        web_ttl: HumanDuration = HumanDuration::secs(3600),
    }
}

section! {
    /// `[audit]`: the tamper-evident trail.
    pub struct AuditConfig {
        /// Refuse new sessions and credentials when the trail cannot be written.
        fail_closed: bool = true,
        retention_days: u32 = 400,
        /// Record bind parameter values of database queries.
        db_params: bool = false,
        /// `db.query` events of one PostgreSQL session that may still be on
        /// their way to the store when the client is told a statement is
        /// done (`ReadyForQuery`); 0 waits for every commit first. All are
        /// durable before `session.end`.
        db_window: usize = 256,
        /// A signed checkpoint every this many events.
        checkpoint_every: u64 = 1000,
        /// And at least this often while events arrive.
        checkpoint_interval: HumanDuration = HumanDuration::secs(60),
        /// Events appended in one transaction at most.
        batch_max: usize = 2048,
        /// Bound of the queue in front of the writer (back-pressure beyond it).
        queue: usize = 65_536,
    }
}

section! {
    /// `[login]`: lockout after repeated failures (PCI DSS 8.3.4).
    pub struct LoginConfig {
        max_failures: u32 = 10,
        failure_window: HumanDuration = HumanDuration::secs(15 * 60),
        lockout: HumanDuration = HumanDuration::secs(30 * 60),
    }
}

section! {
    /// `[aws]`: the broker's own AWS access.
    pub struct AwsConfig {
        region: Option<String> = None,
        /// Endpoint for every AWS service (VPC endpoints, emulators);
        /// `AWS_ENDPOINT_URL_<SERVICE>` still wins per service.
        endpoint_url: Option<Url> = None,
        /// Console federation endpoint (getSigninToken / login).
        federation_url: Url = Url::parse("https://signin.aws.amazon.com/federation").expect("static url"),
        console_url: Url = Url::parse("https://console.aws.amazon.com/").expect("static url"),
        /// The broker's own credentials come from a role chain (caps durations at 1 h).
        role_chaining: bool = true,
    }
}

/// One `[[target]]`: something users reach through the broker.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub kind: TargetKind,
}

#[derive(Debug, Clone)]
pub enum TargetKind {
    Ssh(SshTarget),
    Postgres(PostgresTarget),
    Aws(AwsTarget),
    Ecs(EcsTarget),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshTarget {
    /// `host:port`.
    pub address: String,
    /// Pinned host key, OpenSSH format (`ssh-ed25519 AAAA...`).
    pub host_key: Option<String>,
    /// Host CA public key whose host certificates are accepted.
    pub host_ca: Option<String>,
    /// Default login on the host.
    pub login: String,
    /// Other logins users may ask for with `LOGIN@TARGET`.
    #[serde(default)]
    pub logins: Vec<String>,
    #[serde(default)]
    pub credential: Credential,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresTarget {
    /// `host:port` of the database server.
    pub address: String,
    pub database: String,
    /// Database user the broker logs in as (for `secretsmanager`, the secret may name it).
    pub db_user: Option<String>,
    pub credential: Credential,
    #[serde(default)]
    pub tls: TlsMode,
    /// CA bundle for `verify-ca` / `verify-full` (e.g. the RDS bundle).
    pub ca_file: Option<PathBuf>,
    /// Reach the database through an SSM port-forwarding session.
    pub via: Option<Via>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsTarget {
    pub role_arn: String,
    #[serde(default = "default_aws_max")]
    pub max_duration: HumanDuration,
    pub external_id: Option<String>,
    /// Inline session policy (JSON) that narrows the role per request.
    pub session_policy: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcsTarget {
    pub cluster: String,
    pub service: Option<String>,
    pub task: Option<String>,
    pub container: String,
    pub command: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Via {
    /// SSM target (instance id or `ecs:CLUSTER_TASK_RUNTIMEID`) that forwards to the database.
    pub ssm_target: String,
}

/// Where the broker gets the credential it injects upstream.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(tag = "from", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Credential {
    /// A short-lived certificate signed by the broker's target CA.
    #[default]
    BrokerCa,
    /// A secret in AWS Secrets Manager (SSH private key, or database password).
    Secretsmanager { secret_id: String },
    /// An RDS IAM authentication token generated by the broker.
    RdsIam { db_user: String },
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    Disable,
    Require,
    VerifyCa,
    #[default]
    VerifyFull,
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration::secs(10)
}

fn default_aws_max() -> HumanDuration {
    HumanDuration::secs(3600)
}

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

    pub fn target(&self, name: &str) -> Option<&TargetConfig> {
        self.targets.iter().find(|t| t.name == name)
    }
}

impl OidcConfig {
    /// Loads the client secret from the environment or a file; never from the config itself.
    pub fn client_secret(
        &self,
        env: &HashMap<String, String>,
    ) -> Result<Option<SecretString>, String> {
        if let Some(path) = &self.client_secret_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "oidc.client_secret_file: reading {}: {}",
                    path.display(),
                    e.kind()
                )
            })?;
            return Ok(Some(SecretString::from(text.trim().to_owned())));
        }
        if let Some(var) = &self.client_secret_env {
            return Ok(env
                .get(var)
                .filter(|v| !v.is_empty())
                .map(|v| SecretString::from(v.clone())));
        }
        Ok(None)
    }
}

impl TargetConfig {
    /// The target as policy sees it.
    pub fn to_ref(&self) -> crate::domain::policy::TargetRef {
        crate::domain::policy::TargetRef {
            name: self.name.clone(),
            kind: self.kind_name().to_owned(),
            tags: self.tags.clone(),
        }
    }

    /// The action that uses this kind of target.
    pub fn action(&self) -> crate::domain::policy::Action {
        use crate::domain::policy::Action;
        match self.kind {
            TargetKind::Ssh(_) => Action::Ssh,
            TargetKind::Postgres(_) => Action::DbConnect,
            TargetKind::Aws(_) => Action::AwsAssume,
            TargetKind::Ecs(_) => Action::EcsExec,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            TargetKind::Ssh(_) => "ssh",
            TargetKind::Postgres(_) => "postgres",
            TargetKind::Aws(_) => "aws",
            TargetKind::Ecs(_) => "ecs",
        }
    }
}

/// Valid target names can appear in SSH usernames, database names and URLs.
pub fn valid_target_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn read_targets(value: Option<toml::Value>, errors: &mut Vec<String>) -> Vec<TargetConfig> {
    let Some(value) = value else {
        return Vec::new();
    };
    let toml::Value::Array(items) = value else {
        errors.push("target: expected [[target]] tables".into());
        return Vec::new();
    };
    let mut out: Vec<TargetConfig> = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let toml::Value::Table(mut table) = item else {
            errors.push(format!("target[{index}]: expected a table"));
            continue;
        };
        let name = match table.remove("name") {
            Some(toml::Value::String(s)) => s,
            _ => {
                errors.push(format!("target[{index}].name: missing or not a string"));
                continue;
            }
        };
        let label = format!("target[{index}] \"{name}\"");
        if !valid_target_name(&name) {
            errors.push(format!(
                "{label}.name: use letters, digits, '-', '_' and '.', starting with a letter or digit"
            ));
        }
        if out.iter().any(|t| t.name == name) {
            errors.push(format!("{label}.name: duplicate target name"));
        }
        let tags = match table.remove("tags") {
            None => BTreeMap::new(),
            Some(v) => match v.try_into::<BTreeMap<String, String>>() {
                Ok(tags) => tags,
                Err(e) => {
                    errors.push(format!("{label}.tags: {}", clean(&e.to_string())));
                    BTreeMap::new()
                }
            },
        };
        let kind_name = match table.remove("kind") {
            Some(toml::Value::String(s)) => s,
            _ => {
                errors.push(format!(
                    "{label}.kind: missing (one of ssh, postgres, aws, ecs)"
                ));
                continue;
            }
        };
        let value = toml::Value::Table(table);
        let kind = match kind_name.as_str() {
            "ssh" => value.try_into().map(TargetKind::Ssh),
            "postgres" => value.try_into().map(TargetKind::Postgres),
            "aws" => value.try_into().map(TargetKind::Aws),
            "ecs" => value.try_into().map(TargetKind::Ecs),
            other => {
                errors.push(format!(
                    "{label}.kind: unknown kind {other:?} (one of ssh, postgres, aws, ecs)"
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
        check_target(&label, &kind, errors);
        out.push(TargetConfig { name, tags, kind });
    }
    out
}

fn check_target(label: &str, kind: &TargetKind, errors: &mut Vec<String>) {
    match kind {
        TargetKind::Ssh(ssh) => {
            if ssh.host_key.is_none() && ssh.host_ca.is_none() {
                errors.push(format!(
                    "{label}: set host_key (pinned) or host_ca; the broker never trusts on first use"
                ));
            }
            if matches!(ssh.credential, Credential::RdsIam { .. }) {
                errors.push(format!(
                    "{label}.credential: rds-iam is for postgres targets"
                ));
            }
            if !ssh.address.contains(':') {
                errors.push(format!("{label}.address: expected host:port"));
            }
        }
        TargetKind::Postgres(pg) => {
            if pg.credential == Credential::BrokerCa {
                errors.push(format!(
                    "{label}.credential: postgres targets need secretsmanager or rds-iam"
                ));
            }
            if matches!(pg.credential, Credential::RdsIam { .. }) && pg.tls == TlsMode::Disable {
                errors.push(format!(
                    "{label}.tls: RDS IAM tokens are only sent over TLS"
                ));
            }
            if !pg.address.contains(':') {
                errors.push(format!("{label}.address: expected host:port"));
            }
        }
        TargetKind::Aws(aws) => {
            if !aws.role_arn.starts_with("arn:aws") || !aws.role_arn.contains(":role/") {
                errors.push(format!("{label}.role_arn: not an IAM role ARN"));
            }
            let secs = aws.max_duration.0.as_secs();
            if !(900..=43_200).contains(&secs) {
                errors.push(format!(
                    "{label}.max_duration: STS allows 15m to 12h, got {}",
                    aws.max_duration
                ));
            }
        }
        TargetKind::Ecs(ecs) => {
            if ecs.service.is_none() && ecs.task.is_none() {
                errors.push(format!("{label}: set service or task"));
            }
        }
    }
}

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

fn read_exports(value: Option<toml::Value>, errors: &mut Vec<String>) -> Vec<ExportConfig> {
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

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty duration".into());
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!(
                    "invalid duration {text:?} (use e.g. 30s, 15m, 8h, 1h30m)"
                ));
            }
            let number: u64 = rest[..digits]
                .parse()
                .map_err(|_| format!("invalid duration {text:?}"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let part = match unit {
                "ms" => Duration::from_millis(number),
                "s" => Duration::from_secs(number),
                "m" => Duration::from_secs(number.saturating_mul(60)),
                "h" => Duration::from_secs(number.saturating_mul(3600)),
                "d" => Duration::from_secs(number.saturating_mul(86_400)),
                _ => {
                    return Err(format!(
                        "invalid duration {text:?}: unit must be ms, s, m, h or d"
                    ));
                }
            };
            total = total.saturating_add(part);
        }
        Ok(Self(total))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let mut secs = self.0.as_secs();
        if secs == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if secs >= size {
                write!(f, "{}{unit}", secs / size)?;
                secs %= size;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        HumanDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let digits = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let invalid = || format!("invalid size {text:?} (use e.g. 10GiB, 512MiB, 64KiB or bytes)");
        if digits == 0 {
            return Err(invalid());
        }
        let number: u64 = text[..digits].parse().map_err(|_| invalid())?;
        let unit: u64 = match text[digits..].trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            _ => return Err(invalid()),
        };
        number.checked_mul(unit).map(Self).ok_or_else(invalid)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, size) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(u64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Bytes(n) => Ok(ByteSize(n)),
            Written::Text(text) => ByteSize::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// An absolute time (RFC 3339 or `YYYY-MM-DD`, UTC) or an age (`15m`, `7d`).
pub fn parse_time(text: &str) -> anyhow::Result<i64> {
    use crate::domain::audit::now_us;
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1000) as i64);
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(date) = time::Date::parse(text, &date_format) {
        let t = date.midnight().assume_utc();
        return Ok((t.unix_timestamp_nanos() / 1000) as i64);
    }
    if let Ok(age) = HumanDuration::parse(text) {
        return Ok(now_us() - age.0.as_micros() as i64);
    }
    anyhow::bail!("invalid time {text:?}: use RFC 3339, YYYY-MM-DD, or an age like 15m or 7d")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let table: toml::Table = toml::from_str(text).unwrap();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_parts(table, &env, false)
    }

    #[test]
    fn sizes_parse_and_print() {
        for (text, bytes) in [
            ("10GiB", 10u64 << 30),
            ("512MiB", 512 << 20),
            ("64KiB", 64 << 10),
            ("1GB", 1_000_000_000),
            ("4096", 4096),
            ("100 MiB", 100 << 20),
        ] {
            let size = ByteSize::parse(text).unwrap();
            assert_eq!(size.0, bytes, "{text}");
            assert_eq!(ByteSize::parse(&size.to_string()).unwrap(), size);
        }
        for bad in ["", "GiB", "1.5GiB", "10 gigs", "-1", "99999999999TiB"] {
            assert!(ByteSize::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_parse_and_print() {
        for (text, secs) in [
            ("15m", 900),
            ("8h", 28_800),
            ("1h30m", 5400),
            ("90s", 90),
            ("2d", 172_800),
        ] {
            let d = HumanDuration::parse(text).unwrap();
            assert_eq!(d.0.as_secs(), secs, "{text}");
            assert_eq!(HumanDuration::parse(&d.to_string()).unwrap(), d);
        }
        assert_eq!(
            HumanDuration::parse("500ms").unwrap().0,
            Duration::from_millis(500)
        );
        for bad in ["", "m", "15", "15x", "h1", "-5m"] {
            assert!(HumanDuration::parse(bad).is_err(), "{bad}");
        }
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
    fn networks_contain_their_addresses_only() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.1".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(!net.contains("fd00::1".parse().unwrap()));
        let host = Cidr::parse("192.0.2.7").unwrap();
        assert!(host.contains("192.0.2.7".parse().unwrap()));
        assert!(!host.contains("192.0.2.8".parse().unwrap()));
        let v6 = Cidr::parse("fd00:ab::/32").unwrap();
        assert!(v6.contains("fd00:ab:1::9".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("ten/8").is_err());
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
