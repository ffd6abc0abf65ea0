//! The database side, in three steps so the session's records can be
//! written before anything of the login reaches the database: the
//! credential ([`Upstreams::credential`]: a Secrets Manager password or an
//! RDS IAM token), the transport ([`Upstreams::transport`]: TCP or an SSM
//! port route, TLS per the target's `tls` mode), and the login
//! ([`Upstreams::login_on`]: SCRAM-SHA-256, then the server's parameters
//! up to its first `ReadyForQuery`). Every step has a timeout. A server
//! asking for the password in cleartext or as MD5 (a replayable hash) is
//! refused unless the target sets `allow_weak_auth`; then the room's
//! [`WeakAuthGate`] makes `db.weak_auth` durable before the password goes
//! out, and a store that refuses it refuses the login: the password is
//! never sent unrecorded.
//!
//! Credentials are cached briefly (a secret five minutes, an RDS token ten
//! of its fifteen); when the database refuses a cached password it is read
//! again once, so a rotated secret costs one retry, not an outage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::protocol::{self, Auth, Backend};
use super::{Stream, cancel, tls};
use crate::aws::Aws;
use crate::config::{Credential, PostgresTarget, TlsMode};
use crate::sync::lock;

const SECRET_TTL: Duration = Duration::from_secs(300);
const IAM_TOKEN_TTL: Duration = Duration::from_secs(600);
/// Largest message accepted from the server before the session starts.
const MAX_STARTUP_MESSAGE: usize = 1 << 20;

/// Why the broker could not open a database session. Messages name the
/// target and the step, never a credential.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the target is misconfigured: {0}")]
    Config(String),
    /// The target's TLS settings (CA file, host name) cannot be used.
    #[error("the target is misconfigured: {0:#}")]
    TlsConfig(#[source] anyhow::Error),
    #[error("the broker cannot get the database credential: {0}")]
    Credential(String),
    #[error("the broker cannot get the database credential: {0}")]
    Secret(#[from] crate::aws::secrets::Error),
    #[error("the broker cannot get the database credential: {0}")]
    RdsToken(#[from] crate::aws::rds::Error),
    #[error("cannot reach the database at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("cannot reach the database at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the database at {address}: SSM port route: {source}")]
    Route {
        address: String,
        #[source]
        source: crate::ecs::Error,
    },
    #[error("TLS to the database failed: {0}")]
    Tls(String),
    #[error("TLS to the database failed: {0}")]
    TlsIo(#[source] std::io::Error),
    #[error("the database refused the broker's login ({sqlstate}: {message})")]
    Refused { sqlstate: String, message: String },
    #[error("the database broke the protocol: {0}")]
    Protocol(String),
    /// The server's SCRAM messages (`step`: its first answer or its signature).
    #[error("the database broke the protocol: {step}: {source}")]
    Scram {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the database broke the protocol: {0}")]
    Message(#[from] super::protocol::ProtocolError),
    #[error(
        "the database asked for the password {0}, which the broker refuses (SCRAM-SHA-256 only; allow_weak_auth = true on the target permits it)"
    )]
    WeakAuth(&'static str),
    #[error(
        "the database asked for the password {0}; it was not sent, because its audit record (db.weak_auth) could not be written: {1}"
    )]
    WeakAuthUnrecorded(&'static str, String),
}

/// What a login asks the database for, and whom it tells first.
pub struct LoginSession<'a> {
    pub database: &'a str,
    /// The client's session parameters, passed on.
    pub params: &'a [(String, String)],
    pub gate: WeakAuthGate<'a>,
}

/// Called before the password goes out in cleartext or as MD5 (a target
/// with `allow_weak_auth`), with how (`"in cleartext"`, `"as MD5"`) and
/// whether the connection to the database is TLS: it makes the
/// `db.weak_auth` record durable. An `Err` (the store refused it) ends the
/// login there, before the password is sent.
pub type WeakAuthGate<'a> = &'a (
        dyn Fn(
    &'static str,
    bool,
) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>
            + Send
            + Sync
    );

impl Error {
    /// The SQLSTATE the client is told: `08006` (connection failure) for
    /// every upstream problem. A refused database login is the broker's
    /// credential, not the user's password, so it is not `28P01`.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            // The broker cannot record, as when a session cannot open.
            Error::WeakAuthUnrecorded(..) => "57P03",
            _ => "08006",
        }
    }
}

/// The transport of a database reached through an SSM port route (the
/// broker runs outside the VPC): the forwarded connection, TLS on top when
/// the target asks for it, and the route, closed when the connection goes.
pub struct Routed {
    io: RoutedIo,
    route: Option<crate::ecs::Port>,
}

enum RoutedIo {
    Plain(crate::ssm::port::Stream),
    Tls(Box<tokio_rustls::client::TlsStream<crate::ssm::port::Stream>>),
}

impl Routed {
    pub fn is_tls(&self) -> bool {
        matches!(self.io, RoutedIo::Tls(_))
    }
}

impl Drop for Routed {
    fn drop(&mut self) {
        if let Some(port) = self.route.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(e) = port.close().await {
                    tracing::warn!(error = %e, "closing the SSM port route");
                }
            });
        }
    }
}

macro_rules! routed_io {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.get_mut().io {
            RoutedIo::Plain($s) => $e,
            RoutedIo::Tls(tls) => {
                let $s = tls.as_mut();
                $e
            }
        }
    };
}

impl tokio::io::AsyncRead for Routed {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        routed_io!(self, s => std::pin::Pin::new(s).poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for Routed {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        routed_io!(self, s => std::pin::Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        routed_io!(self, s => std::pin::Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        routed_io!(self, s => std::pin::Pin::new(s).poll_shutdown(cx))
    }
}

/// Opens an SSM port route to `address` through `ssm_target` and one
/// forwarded connection on it.
pub async fn open_route(
    aws: &Aws,
    ssm_target: &str,
    address: &str,
) -> Result<(crate::ecs::Port, crate::ssm::port::Stream), Error> {
    let unreachable = |source: crate::ecs::Error| Error::Route {
        address: format!("{address} via {ssm_target}"),
        source,
    };
    let (host, port) = address
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
        .ok_or_else(|| Error::Config(format!("address {address:?} is not HOST:PORT")))?;
    let route = crate::ecs::open_port(aws, ssm_target, host, port)
        .await
        .map_err(unreachable)?;
    match route.connect().await {
        Ok(stream) => Ok((route, stream)),
        Err(e) => {
            let _ = route.close().await;
            Err(unreachable(e))
        }
    }
}

/// A logged-in database connection, before its first query.
pub struct Connected {
    pub stream: Stream,
    /// The server's `ParameterStatus` messages, as sent.
    pub parameter_status: Vec<u8>,
    /// Transaction status of the first `ReadyForQuery`.
    pub status: u8,
    pub cancel: cancel::Upstream,
    pub db_user: String,
    pub tls: bool,
    /// How the password went, when not by SCRAM (`"in cleartext"`, `"as
    /// MD5"`): only for a target with `allow_weak_auth`, recorded through
    /// the [`WeakAuthGate`] before it was sent.
    pub weak_auth: Option<&'static str>,
}

/// A credential for one login.
#[derive(Clone)]
struct Login {
    user: String,
    password: SecretString,
    cached: bool,
}

/// Connections to databases, with the credential and TLS caches.
pub struct Upstreams {
    aws: Aws,
    credentials: Mutex<HashMap<String, (Instant, Login)>>,
    tls: Mutex<HashMap<String, Option<Arc<rustls::ClientConfig>>>>,
}

impl Upstreams {
    pub fn new(aws: Aws) -> Self {
        Self {
            aws,
            credentials: Mutex::new(HashMap::new()),
            tls: Mutex::new(HashMap::new()),
        }
    }

    /// The credential the broker logs in to the target with (cached
    /// briefly). Reading it reaches Secrets Manager or signs a token, never
    /// the database.
    pub async fn credential(
        &self,
        name: &str,
        target: &PostgresTarget,
    ) -> Result<DbCredential, Error> {
        self.login(name, target, false)
            .await
            .map(|login| DbCredential { login })
    }

    /// The transport to the target: TCP (or an SSM port route) and TLS per
    /// the target's `tls`. Nothing of the login is sent yet, so this may
    /// overlap with writing the session's records.
    pub async fn transport(&self, name: &str, target: &PostgresTarget) -> Result<Transport, Error> {
        let tls = self.tls_config(name, target)?;
        match &target.via {
            Some(via) => self.transport_routed(target, &via.ssm_target, tls).await,
            None => transport_direct(target, tls).await,
        }
    }

    /// Logs in to `database` over `transport` with `credential`, passing on
    /// the client's session parameters: the credential reaches the target
    /// here. A cached password the database refuses is read again once
    /// (on a new transport), so a rotated secret costs one retry.
    pub async fn login_on(
        &self,
        name: &str,
        target: &PostgresTarget,
        transport: Transport,
        credential: DbCredential,
        session: LoginSession<'_>,
    ) -> Result<Connected, Error> {
        let LoginSession {
            database,
            params,
            gate,
        } = session;
        let login = credential.login;
        match transport
            .login(target, database, params, &login, gate)
            .await
        {
            Err(Error::Refused { sqlstate, .. })
                if login.cached && (sqlstate == "28P01" || sqlstate == "28000") =>
            {
                let fresh = self.login(name, target, true).await?;
                let transport = self.transport(name, target).await?;
                transport
                    .login(target, database, params, &fresh, gate)
                    .await
            }
            other => other,
        }
    }

    fn tls_config(
        &self,
        name: &str,
        target: &PostgresTarget,
    ) -> Result<Option<Arc<rustls::ClientConfig>>, Error> {
        if let Some(config) = lock(&self.tls).get(name) {
            return Ok(config.clone());
        }
        let config = tls::client_config(target).map_err(Error::TlsConfig)?;
        lock(&self.tls).insert(name.to_owned(), config.clone());
        Ok(config)
    }

    async fn login(
        &self,
        name: &str,
        target: &PostgresTarget,
        fresh: bool,
    ) -> Result<Login, Error> {
        let cached = (!fresh)
            .then(|| lock(&self.credentials).get(name).cloned())
            .flatten();
        if let Some((at, login)) = cached {
            let ttl = match target.credential {
                Credential::RdsIam { .. } => IAM_TOKEN_TTL,
                _ => SECRET_TTL,
            };
            if at.elapsed() < ttl {
                return Ok(Login {
                    cached: true,
                    ..login.clone()
                });
            }
        }
        let timeout = target.connect_timeout.0;
        let login = match &target.credential {
            Credential::Secretsmanager { secret_id } => {
                let secret = tokio::time::timeout(timeout, self.aws.db_credential(secret_id))
                    .await
                    .map_err(|_| {
                        Error::Credential(format!("reading secret {secret_id:?} timed out"))
                    })??;
                let user = target.db_user.clone().or(secret.username).ok_or_else(|| {
                    Error::Config(format!(
                        "set db_user: secret {secret_id:?} does not name a username"
                    ))
                })?;
                Login {
                    user,
                    password: secret.password,
                    cached: false,
                }
            }
            Credential::RdsIam { db_user } => {
                let host = tls::host_of(&target.address);
                let port = port_of(&target.address)?;
                let token =
                    tokio::time::timeout(timeout, self.aws.rds_auth_token(host, port, db_user))
                        .await
                        .map_err(|_| {
                            Error::Credential("signing the RDS IAM token timed out".into())
                        })??;
                Login {
                    user: db_user.clone(),
                    password: token,
                    cached: false,
                }
            }
            Credential::BrokerCa => {
                return Err(Error::Config(
                    "postgres targets need credential secretsmanager or rds-iam".into(),
                ));
            }
        };
        lock(&self.credentials).insert(name.to_owned(), (Instant::now(), login.clone()));
        Ok(login)
    }

    /// [`Self::transport`] through an SSM port route (`via.ssm_target`).
    async fn transport_routed(
        &self,
        target: &PostgresTarget,
        ssm_target: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Transport, Error> {
        let timeout = target.connect_timeout.0;
        let address = target.address.clone();
        let late = |what: &str| Error::Unreachable {
            address: format!("{address} via {ssm_target}"),
            reason: format!("{what} did not finish within {}", target.connect_timeout),
        };
        let (route, io) =
            tokio::time::timeout(timeout, open_route(&self.aws, ssm_target, &address))
                .await
                .map_err(|_| late("the SSM port route"))??;
        let server_name = tls::server_name(&address).map_err(Error::TlsConfig)?;
        let io = match &tls {
            None => RoutedIo::Plain(io),
            Some(config) => RoutedIo::Tls(Box::new(
                tokio::time::timeout(timeout, client_tls(io, config.clone(), server_name.clone()))
                    .await
                    .map_err(|_| late("TLS"))??,
            )),
        };
        Ok(Transport {
            stream: Stream::Routed(Box::new(Routed {
                io,
                route: Some(route),
            })),
            address,
            tls,
            server_name,
            via: Some((self.aws.clone(), ssm_target.to_owned())),
        })
    }
}

/// A database credential for one login ([`Upstreams::credential`]).
pub struct DbCredential {
    login: Login,
}

impl DbCredential {
    /// The database user the broker logs in as.
    pub fn user(&self) -> &str {
        &self.login.user
    }
}

/// A connection to the database before its login ([`Upstreams::transport`]).
pub struct Transport {
    stream: Stream,
    address: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    server_name: rustls::pki_types::ServerName<'static>,
    via: Option<(Aws, String)>,
}

impl Transport {
    async fn login(
        self,
        target: &PostgresTarget,
        database: &str,
        params: &[(String, String)],
        login: &Login,
        gate: WeakAuthGate<'_>,
    ) -> Result<Connected, Error> {
        let Transport {
            stream,
            address,
            tls,
            server_name,
            via,
        } = self;
        let timeout = target.connect_timeout.0;
        let allow_weak = target.allow_weak_auth;
        let (stream, parameter_status, status, pid, key, weak_auth) = tokio::time::timeout(
            timeout,
            login_on(stream, database, params, login, allow_weak, gate),
        )
        .await
        .map_err(|_| Error::Unreachable {
            address: address.clone(),
            reason: format!("the login did not finish within {}", target.connect_timeout),
        })??;
        Ok(Connected {
            tls: stream.is_tls(),
            stream,
            parameter_status,
            status,
            cancel: cancel::Upstream {
                address,
                tls,
                server_name,
                connect_timeout: timeout,
                pid,
                key,
                via,
            },
            db_user: login.user.clone(),
            weak_auth,
        })
    }
}

/// [`Upstreams::transport`] over TCP.
async fn transport_direct(
    target: &PostgresTarget,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Transport, Error> {
    let timeout = target.connect_timeout.0;
    let address = target.address.clone();
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(&address))
        .await
        .map_err(|_| Error::Unreachable {
            address: address.clone(),
            reason: format!("no answer within {}", target.connect_timeout),
        })?
        .map_err(|source| Error::Connect {
            address: address.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let server_name = tls::server_name(&address).map_err(Error::TlsConfig)?;
    let stream = match &tls {
        None => Stream::Plain(tcp),
        Some(config) => {
            tokio::time::timeout(timeout, start_tls(tcp, config.clone(), server_name.clone()))
                .await
                .map_err(|_| Error::Unreachable {
                    address: address.clone(),
                    reason: format!("TLS did not finish within {}", target.connect_timeout),
                })??
        }
    };
    Ok(Transport {
        stream,
        address,
        tls,
        server_name,
        via: None,
    })
}

async fn start_tls(
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
) -> Result<Stream, Error> {
    let tls = client_tls(tcp, config, server_name).await?;
    Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls))))
}

/// `SSLRequest`, then the TLS handshake, on any transport.
async fn client_tls<S>(
    mut io: S,
    config: Arc<rustls::ClientConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
) -> Result<tokio_rustls::client::TlsStream<S>, Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    io.write_all(&protocol::ssl_request())
        .await
        .map_err(Error::TlsIo)?;
    let mut answer = [0u8; 1];
    io.read_exact(&mut answer).await.map_err(Error::TlsIo)?;
    match answer[0] {
        b'S' => {}
        b'N' => return Err(Error::Tls("the database does not offer TLS".into())),
        _ => return Err(Error::Protocol("unexpected answer to SSLRequest".into())),
    }
    let connector = tokio_rustls::TlsConnector::from(config);
    connector
        .connect(server_name, io)
        .await
        .map_err(Error::TlsIo)
}

type LoggedIn = (Stream, Vec<u8>, u8, i32, Vec<u8>, Option<&'static str>);

async fn login_on(
    mut stream: Stream,
    database: &str,
    params: &[(String, String)],
    login: &Login,
    allow_weak: bool,
    gate: WeakAuthGate<'_>,
) -> Result<LoggedIn, Error> {
    let io = |source: std::io::Error| Error::Connect {
        address: "the database".into(),
        source,
    };
    let mut startup: Vec<(&str, &str)> = vec![("user", &login.user), ("database", database)];
    for (key, value) in params {
        startup.push((key, value));
    }
    stream
        .write_all(&protocol::startup_message(&startup))
        .await
        .map_err(io)?;
    stream.flush().await.map_err(io)?;
    let password = login.password.expose_secret().as_bytes();
    let mut scram: Option<ScramSha256> = None;
    let mut parameter_status = Vec::new();
    let mut backend_key = None;
    let mut weak_auth = None;
    // Refused, or on record before the password goes.
    let weak = async |method: &'static str, tls: bool| {
        if !allow_weak {
            return Err(Error::WeakAuth(method));
        }
        gate(method, tls)
            .await
            .map_err(|e| Error::WeakAuthUnrecorded(method, e))?;
        Ok(Some(method))
    };
    loop {
        let (tag, body) = read_message(&mut stream, MAX_STARTUP_MESSAGE)
            .await
            .map_err(io)?;
        let message = protocol::parse_backend(tag, &body)?;
        let reply = match message {
            Backend::Authentication(Auth::Ok) => None,
            Backend::Authentication(Auth::Cleartext) => {
                weak_auth = weak("in cleartext", stream.is_tls()).await?;
                Some(protocol::password_message(password))
            }
            Backend::Authentication(Auth::Md5(salt)) => {
                weak_auth = weak("as MD5", stream.is_tls()).await?;
                let hashed = postgres_protocol::authentication::md5_hash(
                    login.user.as_bytes(),
                    password,
                    salt,
                );
                Some(protocol::password_message(hashed.as_bytes()))
            }
            Backend::Authentication(Auth::Sasl(mechanisms)) => {
                if !mechanisms.iter().any(|m| *m == b"SCRAM-SHA-256") {
                    return Err(Error::Protocol(
                        "the database offers no SASL mechanism the broker supports".into(),
                    ));
                }
                let client = ScramSha256::new(password, ChannelBinding::unsupported());
                let first = protocol::sasl_initial_response("SCRAM-SHA-256", client.message());
                scram = Some(client);
                Some(first)
            }
            Backend::Authentication(Auth::SaslContinue(data)) => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| Error::Protocol("SASL continue before SASL start".into()))?;
                client.update(data).map_err(|source| Error::Scram {
                    step: "SCRAM",
                    source,
                })?;
                Some(protocol::sasl_response(client.message()))
            }
            Backend::Authentication(Auth::SaslFinal(data)) => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| Error::Protocol("SASL final before SASL start".into()))?;
                // Verifies the server's signature: it knows the password too.
                client.finish(data).map_err(|source| Error::Scram {
                    step: "SCRAM server signature",
                    source,
                })?;
                None
            }
            Backend::Authentication(Auth::Other(code)) => {
                return Err(Error::Protocol(format!(
                    "unsupported authentication request {code}"
                )));
            }
            Backend::ParameterStatus { .. } => {
                parameter_status.push(tag);
                parameter_status.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
                parameter_status.extend_from_slice(&body);
                None
            }
            Backend::BackendKeyData { pid, key } => {
                backend_key = Some((pid, key.to_vec()));
                None
            }
            Backend::ReadyForQuery(status) => {
                let (pid, key) = backend_key.unwrap_or((0, vec![0; 4]));
                return Ok((stream, parameter_status, status, pid, key, weak_auth));
            }
            Backend::Error(fields) => {
                return Err(Error::Refused {
                    sqlstate: String::from_utf8_lossy(fields.code).into_owned(),
                    message: String::from_utf8_lossy(fields.message).into_owned(),
                });
            }
            Backend::NegotiateProtocolVersion { .. } | Backend::Notice(_) => None,
            _ => {
                return Err(Error::Protocol(format!(
                    "unexpected message {:?} during login",
                    tag as char
                )));
            }
        };
        if let Some(reply) = reply {
            stream.write_all(&reply).await.map_err(io)?;
            stream.flush().await.map_err(io)?;
        }
    }
}

/// Reads one typed message (header and body).
pub async fn read_message<R: AsyncRead + Unpin>(
    stream: &mut R,
    max: usize,
) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).await?;
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len < 4 || len as usize - 4 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("message length {len} out of range"),
        ));
    }
    let mut body = vec![0u8; len as usize - 4];
    stream.read_exact(&mut body).await?;
    Ok((head[0], body))
}

fn port_of(address: &str) -> Result<u16, Error> {
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .ok_or_else(|| Error::Config(format!("address {address:?} has no port")))
}

/// The TLS mode as audited.
pub fn tls_mode(mode: TlsMode) -> &'static str {
    match mode {
        TlsMode::Disable => "disable",
        TlsMode::Require => "require",
        TlsMode::VerifyCa => "verify-ca",
        TlsMode::VerifyFull => "verify-full",
    }
}
