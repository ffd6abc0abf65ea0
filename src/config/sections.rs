//! The plain `[section]`s of the configuration, read key by key.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;

use secrecy::SecretString;
use url::Url;

use super::{ByteSize, Cidr, HumanDuration, Source};

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
            pub(super) fn read(section: &str, entries: &BTreeMap<String, Source>, errors: &mut Vec<String>) -> Self {
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
        /// Refuse ID tokens that do not carry `email_verified = true` (an
        /// IdP that never sends the claim needs `false`).
        require_email_verified: bool = true,
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
        /// Largest terminal recording of one session: past it the session
        /// ends (`recording_limit`), so one session cannot fill the data_dir.
        max_recording: ByteSize = ByteSize(1 << 30),
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
