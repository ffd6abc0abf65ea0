//! Wiring: the only module that knows every other one. Binds the
//! listeners, opens the store, loads the keys, starts the services and the
//! rooms, and drains them on shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{self, Audit};
use crate::aws::Aws;
use crate::config::Config;
use crate::domain::audit::{AuditEvent, EventKind, Outcome};
use crate::domain::policy::{Action, RequestContext, Resource};
use crate::domain::principal::CertGrants;
use crate::edge::Edge;
use crate::identity::{GrantsFn, Identity, PublicAddrs};
use crate::keys::{self, KeyMaterial};
use crate::metrics::Metrics;
use crate::policy::{Engine, Gate};
use crate::sessions::Sessions;
use crate::store::{self, Db};
use crate::{pg, ssh, web};

/// Where a started broker listens; sent to the caller once everything is up.
#[derive(Debug, Clone)]
pub struct Running {
    pub http: SocketAddr,
    pub ssh: SocketAddr,
    pub postgres: SocketAddr,
    pub public_url: url::Url,
    /// `--dev` only: the break-glass admin created on first start, shown once.
    pub dev_breakglass: Option<DevBreakglass>,
}

/// The one-time secrets of the dev break-glass admin.
#[derive(Debug, Clone)]
pub struct DevBreakglass {
    pub username: String,
    pub password: secrecy::SecretString,
    pub totp_secret: secrecy::SecretString,
}

/// The broker's bound listeners.
pub struct Listeners {
    pub http: TcpListener,
    pub ssh: TcpListener,
    pub postgres: TcpListener,
}

impl Listeners {
    /// Binds every configured address; a port in use is one clear error.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            http: bind("server.http_listen", config.server.http_listen).await?,
            ssh: bind("server.ssh_listen", config.server.ssh_listen).await?,
            postgres: bind("server.postgres_listen", config.server.postgres_listen).await?,
        })
    }
}

/// Runs the broker until `shutdown` is cancelled. `ready` receives the bound
/// addresses once every room accepts connections.
pub async fn run(
    config: Config,
    env: HashMap<String, String>,
    shutdown: CancellationToken,
    ready: Option<oneshot::Sender<Running>>,
) -> anyhow::Result<()> {
    // Bind first: a port in use is reported before anything is written.
    let listeners = Listeners::bind(&config).await?;
    run_with(config, listeners, env, shutdown, ready).await
}

/// Like [`run`], on listeners the caller bound (tests bind port 0 and learn
/// the public URL before the broker starts).
pub async fn run_with(
    config: Config,
    listeners: Listeners,
    env: HashMap<String, String>,
    shutdown: CancellationToken,
    ready: Option<oneshot::Sender<Running>>,
) -> anyhow::Result<()> {
    let Listeners {
        http: http_listener,
        ssh: ssh_listener,
        postgres: pg_listener,
    } = listeners;
    // Policies are checked before anything is written: a broker with
    // invalid policies does not start.
    let policy_dir = policy_dir(&config)?;
    let engine = Arc::new(Engine::load(&policy_dir).map_err(|e| anyhow::anyhow!("{e}"))?);

    let database_url = config.database_url();
    if let Some(path) = sqlite_path(&database_url) {
        keys::create_private_dir(&config.server.data_dir)
            .with_context(|| "server.data_dir".to_owned())?;
        create_private_file(&path)?;
    }
    let db = Db::connect(&database_url, Duration::from_secs(10))
        .await
        .with_context(|| {
            format!(
                "connecting to database {}",
                store::redact_url(&database_url)
            )
        })?;
    let applied = db.migrate().await.context("migrating the database")?;
    keys::create_private_dir(&config.server.data_dir)
        .with_context(|| "server.data_dir".to_owned())?;
    let (keys, generated) =
        KeyMaterial::load_or_generate(&config.keys_dir()).context("loading key material")?;
    if !generated.is_empty() {
        tracing::info!(keys = ?generated, dir = %config.keys_dir().display(), "generated key material");
    }

    let metrics = Arc::new(Metrics::default());
    let node = config.node_name();
    let (audit, writer) = audit::start(
        db.clone(),
        keys.audit.clone(),
        &config.audit,
        node.clone(),
        metrics.clone(),
    );
    let writer_task = tokio::spawn(writer.run());
    audit
        .gate(
            AuditEvent::new(EventKind::ServerStart, Outcome::Success)
                .actor(format!("pam@{node}"))
                .details(serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "backend": db.backend(),
                    "migrations_applied": applied,
                    "keys_generated": generated,
                    "dev": config.dev,
                })),
        )
        .await
        .context("recording server.start in the audit trail")?;

    let identity = Identity::new(
        &config,
        &env,
        db.clone(),
        audit.clone(),
        metrics.clone(),
        &keys,
        PublicAddrs {
            ssh: config.ssh_public_addr(ssh_listener.local_addr()?),
            postgres: config.postgres_public_addr(pg_listener.local_addr()?),
        },
    )
    .context("setting up identity")?;
    let gate = Gate::new(engine.clone(), audit.clone(), metrics.clone());
    let sessions = Sessions::new(
        db.clone(),
        audit.clone(),
        gate.clone(),
        metrics.clone(),
        node.clone(),
        &config.session,
        config.recordings_dir(),
        config.server.shutdown_grace.0,
    );
    let search = crate::search::Search::new(db.clone(), node.clone(), config.recordings_dir());
    let aws = Aws::load_for(&config.aws, &env, config.uses_aws()).await;
    let discovery = crate::discovery::Discovery::new(
        config.discovery.clone(),
        config.targets.clone(),
        aws.clone(),
        audit.clone(),
        &node,
    );
    let targets = discovery.targets();
    identity.set_grants(grants_from_policy(engine.clone(), targets.clone()));
    let dev_breakglass = if config.dev && !identity.breakglass_exists().await? {
        let enrolment = identity
            .add_breakglass(
                "admin",
                vec!["pam-admins".into(), "breakglass".into()],
                "pam serve --dev",
            )
            .await
            .context("creating the dev break-glass admin")?;
        Some(DevBreakglass {
            username: "admin".into(),
            password: enrolment.password,
            totp_secret: enrolment.totp_secret_base32,
        })
    } else {
        None
    };

    let postgres_public = config.postgres_public_addr(pg_listener.local_addr()?);
    let pg_tls = pg::tls::server_config(&config, pg::tls::host_of(&postgres_public))
        .context("TLS for the PostgreSQL listener")?;
    let exporter = crate::export::Exporter::new(
        &config.exports,
        &env,
        db.clone(),
        audit.clone(),
        &aws,
        &metrics,
        node.clone(),
    )
    .context("setting up [[export]] sinks")?;

    let running = Running {
        http: http_listener.local_addr()?,
        ssh: ssh_listener.local_addr()?,
        postgres: pg_listener.local_addr()?,
        public_url: config.server.public_url.clone(),
        dev_breakglass,
    };
    let rooms = TaskTracker::new();
    let stop_rooms = shutdown.child_token();
    let edge = Edge::new(audit.clone(), metrics.clone(), &config.server);
    rooms.spawn(edge.clone().run(stop_rooms.clone()));
    let aws_access = crate::aws::credentials::AwsAccess::new(
        aws.clone(),
        gate.clone(),
        audit.clone(),
        metrics.clone(),
        targets.clone(),
        config.aws.clone(),
        config.server.public_url.to_string(),
    );
    let web_deps = web::Deps {
        aws: aws_access,
        audit: audit.clone(),
        identity: identity.clone(),
        gate: gate.clone(),
        sessions: sessions.clone(),
        search: search.clone(),
        targets: targets.clone(),
        discovery: (!config.discovery.is_empty()).then(|| discovery.clone()),
        metrics: metrics.clone(),
        ssh_user_ca: keys::openssh_public(&keys.ssh_user_ca, "pam-user-ca"),
        ssh_target_ca: keys::openssh_public(&keys.ssh_target_ca, "pam-target-ca"),
        jwks: jwks(&keys),
        recordings_dir: config.recordings_dir(),
        audit_key: Arc::new(keys.audit.public_bytes().to_vec()),
        secure_cookies: !config.dev,
        verification: web::ui::Verification::default(),
        trusted_proxies: Arc::new(config.server.trusted_proxies.clone()),
    };
    let failed = CancellationToken::new();
    spawn_room(
        &rooms,
        "http",
        &failed,
        web::serve(http_listener, web_deps, stop_rooms.clone()),
    );
    spawn_room(
        &rooms,
        "postgres",
        &failed,
        pg::serve(
            pg_listener,
            pg::Deps {
                identity: identity.clone(),
                gate: gate.clone(),
                sessions: sessions.clone(),
                audit: audit.clone(),
                edge: edge.clone(),
                aws: aws.clone(),
                targets: targets.clone(),
                metrics: metrics.clone(),
                tls: Some(pg_tls),
                dev: config.dev,
                db_params: config.audit.db_params,
                audit_window: config.audit.db_window,
                max_connections: config.server.max_connections,
            },
            stop_rooms.clone(),
        ),
    );
    rooms.spawn(search.run(stop_rooms.clone()));
    rooms.spawn(purge_logins(identity.clone(), stop_rooms.clone()));
    rooms.spawn(exporter.run(stop_rooms.clone()));
    rooms.spawn(check_at_start(
        discovery.clone(),
        aws.clone(),
        !config.discovery.is_empty(),
        stop_rooms.clone(),
    ));
    if !config.discovery.is_empty() {
        rooms.spawn(discovery.clone().run(stop_rooms.clone()));
        rooms.spawn(refresh_on_sighup(discovery.clone(), stop_rooms.clone()));
    }
    rooms.spawn(
        sessions
            .clone()
            .run(identity.revocations(), stop_rooms.clone()),
    );
    rooms.spawn(
        gate.clone()
            .watch(config.policy.watch_interval.0, stop_rooms.clone()),
    );
    let ssh_deps = ssh::Deps {
        identity: identity.clone(),
        gate: gate.clone(),
        sessions: sessions.clone(),
        audit: audit.clone(),
        edge: edge.clone(),
        metrics: metrics.clone(),
        targets: targets.clone(),
        algorithms: config.ssh.clone(),
        host_key: keys.ssh_host.clone(),
        user_ca: keys.ssh_user_ca.clone(),
        target_ca: keys.ssh_target_ca.clone(),
        aws: aws.clone(),
        record_input: config.session.record_input,
        target_cert_ttl: config.session.target_cert_ttl.0,
        max_connections: config.server.max_connections,
        env_allow: ["LANG", "LC_*", "TZ"].map(String::from).to_vec(),
    };
    spawn_room(
        &rooms,
        "ssh",
        &failed,
        ssh::serve(ssh_listener, ssh_deps, stop_rooms.clone()),
    );

    tracing::info!(
        http = %running.http,
        ssh = %running.ssh,
        pg = %running.postgres,
        backend = db.backend(),
        "listening"
    );
    if let Some(ready) = ready {
        let _ = ready.send(running);
    }

    tokio::select! {
        _ = shutdown.cancelled() => tracing::info!("shutting down"),
        _ = failed.cancelled() => tracing::error!("a listener failed; shutting down"),
    }
    stop_rooms.cancel();
    rooms.close();
    // Live sessions get the grace period, then end and are recorded.
    let grace = config.server.shutdown_grace.0 + Duration::from_secs(10);
    if tokio::time::timeout(grace, rooms.wait()).await.is_err() {
        tracing::warn!(
            ?grace,
            "in-flight work did not finish within the grace period"
        );
    }
    // Failures still folded into a summary are recorded before the end.
    edge.flush().await;
    audit
        .note(
            AuditEvent::new(EventKind::ServerStop, Outcome::Success)
                .actor(format!("pam@{node}"))
                .details(serde_json::json!({ "failed": failed.is_cancelled() })),
        )
        .await;
    audit.close().await;
    let _ = writer_task.await;
    db.close().await;
    if failed.is_cancelled() {
        anyhow::bail!("a listener failed (see the log above)");
    }
    Ok(())
}

/// The policy directory; `--dev` falls back to the embedded examples
/// (written under data_dir) when `policy.dir` does not exist.
fn policy_dir(config: &Config) -> anyhow::Result<std::path::PathBuf> {
    let dir = config.policy.dir.clone();
    if dir.exists() || !config.dev {
        return Ok(dir);
    }
    let fallback = config.server.data_dir.join("policies");
    keys::create_private_dir(&fallback)?;
    for (name, text) in crate::policy::EXAMPLES {
        let path = fallback.join(name);
        if !path.exists() {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    tracing::info!(dir = %fallback.display(), "using the example policies");
    Ok(fallback)
}

/// Certificate principals and forwarding decided by policy: the user's own
/// name plus every login they may reach on an SSH target (with a reason),
/// forwarding only if some target permits it.
fn grants_from_policy(engine: Arc<Engine>, targets: crate::discovery::Targets) -> GrantsFn {
    Arc::new(move |identity| {
        let mut grants = CertGrants {
            principals: vec![identity.email.clone()],
            ..CertGrants::default()
        };
        let stated = RequestContext {
            reason: Some("stated".into()),
            ..RequestContext::default()
        };
        for target in targets.snapshot().iter() {
            let crate::config::TargetKind::Ssh(ssh) = &target.kind else {
                continue;
            };
            let resource = Resource::Target(target.to_ref());
            if engine
                .decide(identity, Action::Ssh, &resource, &stated)
                .is_err()
            {
                continue;
            }
            for login in std::iter::once(&ssh.login).chain(ssh.logins.iter()) {
                if !grants.principals.contains(login) && grants.principals.len() < 256 {
                    grants.principals.push(login.clone());
                }
            }
            let forward = |kind: &str| {
                let ctx = RequestContext {
                    forward: Some(kind.into()),
                    ..stated.clone()
                };
                engine
                    .decide(identity, Action::SshForward, &resource, &ctx)
                    .is_ok()
            };
            grants.port_forwarding |= forward("tcp");
            grants.agent_forwarding |= forward("agent");
            grants.x11_forwarding |= forward("x11");
        }
        grants
    })
}

/// Failed checks logged one by one at start; past this, one line with the
/// count (a fleet of 5,000 discovered targets must not flood the log).
const START_CHECK_WARNINGS: usize = 20;

/// `pam targets check` once at start (after discovery's first refresh, when
/// discovery is on): a summary in the log and a warning per failed check,
/// the first [`START_CHECK_WARNINGS`] of them.
async fn check_at_start(
    discovery: crate::discovery::Discovery,
    aws: Aws,
    discovering: bool,
    shutdown: CancellationToken,
) {
    let run = async {
        if discovering {
            // Discovery's own loop reads every source at once; wait for that
            // first round rather than reading every source a second time.
            discovery.first_round().await;
        }
        let targets = discovery.targets().snapshot();
        if targets.is_empty() {
            return;
        }
        let reports = crate::discovery::check::check_all(&aws, &targets, false).await;
        let failed: Vec<_> = reports.iter().filter(|r| !r.ok()).collect();
        let failed_lines = failed.iter().flat_map(|report| {
            report
                .lines
                .iter()
                .filter(|l| !l.ok)
                .map(move |l| (report, l))
        });
        let mut logged = 0usize;
        for (report, line) in failed_lines {
            logged += 1;
            if logged <= START_CHECK_WARNINGS {
                tracing::warn!(
                    target_name = %report.target,
                    check = line.check,
                    detail = %line.detail,
                    fix = line.fix.as_deref().unwrap_or(""),
                    "targets check failed"
                );
            }
        }
        if logged > START_CHECK_WARNINGS {
            tracing::warn!(
                more = logged - START_CHECK_WARNINGS,
                "more targets checks failed than are logged at start: run pam targets check for all of them"
            );
        }
        tracing::info!(
            targets = reports.len(),
            passed = reports.len() - failed.len(),
            failed = failed.len(),
            "targets check (pam targets check for details)"
        );
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = run => {}
    }
}

/// `[[discovery]]` refreshes every source when the broker gets SIGHUP.
async fn refresh_on_sighup(discovery: crate::discovery::Discovery, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: discovery refreshes on its interval only");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = hangup.recv() => {
                if got.is_none() {
                    return;
                }
                tracing::info!("SIGHUP: refreshing discovery");
                discovery.refresh_now();
            }
        }
    }
}

/// Deletes finished logins and one-time codes every ten minutes.
async fn purge_logins(identity: Identity, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => identity.purge().await,
        }
    }
}

async fn bind(key: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        let reason = match e.kind() {
            std::io::ErrorKind::AddrInUse => "address already in use".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            std::io::ErrorKind::AddrNotAvailable => "address not available on this host".to_owned(),
            _ => e.to_string(),
        };
        anyhow::anyhow!("{key} {addr}: {reason}")
    })
}

fn spawn_room<F>(rooms: &TaskTracker, name: &'static str, failed: &CancellationToken, room: F)
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let failed = failed.clone();
    rooms.spawn(async move {
        if let Err(e) = room.await {
            tracing::error!(room = name, error = format!("{e:#}"), "listener failed");
            failed.cancel();
        }
    });
}

/// The public half of the token-signing key, as the JWKS document clients
/// and other services verify broker tokens with.
pub fn jwks(keys: &KeyMaterial) -> serde_json::Value {
    serde_json::json!({
        "keys": [{
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "use": "sig",
            "kid": keys.token_signing.key_id(),
            "x": keys.token_signing.public_b64url(),
        }]
    })
}

/// The file of a `sqlite:` URL.
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    url.strip_prefix("sqlite:")
        .map(|p| std::path::PathBuf::from(p.trim_start_matches("//")))
}

/// Creates an empty file with mode 0600 unless it exists: SQLite then
/// creates its WAL and shared-memory files with the same mode.
pub fn create_private_file(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    Ok(())
}

/// Opens the store and the keys for the offline tools (`pam migrate`,
/// `pam audit verify`, `pam ca show`) without starting any listener.
pub async fn open_store(config: &Config) -> anyhow::Result<Db> {
    let url = config.database_url();
    if let Some(path) = sqlite_path(&url)
        && !path.exists()
    {
        anyhow::bail!(
            "no database at {} (start the broker once, or pass --config / --data-dir)",
            path.display()
        );
    }
    Db::connect(&url, Duration::from_secs(10))
        .await
        .with_context(|| format!("connecting to database {}", store::redact_url(&url)))
}

pub fn audit_handle_for_tools(
    db: Db,
    keys: &KeyMaterial,
    config: &Config,
) -> (Audit, audit::Writer) {
    audit::start(
        db,
        keys.audit.clone(),
        &config.audit,
        format!("{}-cli", config.node_name()),
        Arc::new(Metrics::default()),
    )
}
