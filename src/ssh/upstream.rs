//! The broker's own SSH connection to a target: a connect timeout, the
//! host key checked against the pinned key (or a host CA), and a short-lived
//! certificate from the broker's target CA (principal = the target login,
//! key id = the human's email, so the target's sshd log names the person),
//! or a private key the broker holds. The user never sees either.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngCore;
use russh::client::{self, Handle};
use russh::keys::PublicKeyOrCertificate;
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::{Certificate, HashAlg, PrivateKey, PublicKey};

use crate::config::SshTarget;
use crate::domain::principal::CertGrants;
use crate::sync::lock;

/// How the broker proves itself to the target.
pub enum Credential {
    /// Sign a certificate for a fresh key with this CA.
    TargetCa(PrivateKey),
    /// A private key (from Secrets Manager).
    Key(PrivateKey),
}

/// Who the connection is for (goes into the certificate).
pub struct OnBehalfOf<'a> {
    pub email: &'a str,
    pub session_id: &'a str,
    pub grants: CertGrants,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("cannot reach {target} at {address}: {reason}")]
    Connect {
        target: String,
        address: String,
        reason: String,
    },
    #[error(
        "the host key of {target} ({offered}) does not match the pinned key; refusing to connect (possible man-in-the-middle)"
    )]
    HostKeyMismatch { target: String, offered: String },
    #[error("{target} refused the broker's credential for login {login}")]
    AuthRefused { target: String, login: String },
    #[error("ssh error talking to {target}: {reason}")]
    Protocol { target: String, reason: String },
}

/// An authenticated connection to a target.
pub struct Upstream {
    pub handle: Handle<HostCheck>,
    /// SHA-256 fingerprint of the host key (or host certificate's key).
    pub host_key: String,
    /// Shuts the TCP socket down when dropped (direct connections).
    _cut: Option<Cut>,
    /// The SSM port route the connection runs through (`via`); closed when
    /// the upstream is dropped.
    pub route: Option<crate::ecs::Port>,
}

/// A second handle on the target's socket that shuts it down when dropped.
/// russh runs the connection on a task of its own, which a target that
/// stopped answering (a black hole, not a close) would keep for minutes
/// after everyone let go of it, with its file descriptor: a handshake that
/// timed out, or an upstream whose sessions all ended, is cut at once.
struct Cut(std::net::TcpStream);

impl Drop for Cut {
    fn drop(&mut self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

/// Verifies the target's host key during key exchange.
pub struct HostCheck {
    pinned: Option<PublicKey>,
    host_ca: Option<PublicKey>,
    host_name: String,
    /// What the server offered (for the audit record of a mismatch).
    offered: Arc<Mutex<Option<String>>>,
}

impl client::Handler for HostCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let (accepted, fingerprint) = match offered {
            PublicKeyOrCertificate::PublicKey { key, .. } => (
                self.pinned
                    .as_ref()
                    .is_some_and(|pinned| pinned.key_data() == key.key_data()),
                key.fingerprint(HashAlg::Sha256).to_string(),
            ),
            PublicKeyOrCertificate::Certificate(cert) => {
                let fingerprint = PublicKey::from(cert.public_key().clone())
                    .fingerprint(HashAlg::Sha256)
                    .to_string();
                let pinned = self
                    .pinned
                    .as_ref()
                    .is_some_and(|pinned| pinned.key_data() == cert.public_key());
                (pinned || self.host_certificate_ok(cert), fingerprint)
            }
        };
        *lock(&self.offered) = Some(fingerprint);
        Ok(accepted)
    }
}

impl HostCheck {
    fn host_certificate_ok(&self, cert: &Certificate) -> bool {
        let Some(ca) = &self.host_ca else {
            return false;
        };
        cert.cert_type() == CertType::Host
            && cert.validate([&ca.fingerprint(HashAlg::Sha256)]).is_ok()
            && (cert.valid_principals().is_empty()
                || cert.valid_principals().iter().any(|p| p == &self.host_name))
    }
}

/// Connects and authenticates as `login` on the target.
pub async fn connect(
    name: &str,
    target: &SshTarget,
    login: &str,
    credential: &Credential,
    who: &OnBehalfOf<'_>,
    cert_ttl: Duration,
    aws: &crate::aws::Aws,
) -> Result<Upstream, Error> {
    let parse_key = |text: &Option<String>| {
        text.as_deref()
            .and_then(|t| PublicKey::from_openssh(t.trim()).ok())
    };
    let host_name = target
        .address
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
        .unwrap_or_else(|| target.address.clone());
    let offered = Arc::new(Mutex::new(None));
    let check = HostCheck {
        pinned: parse_key(&target.host_key),
        host_ca: parse_key(&target.host_ca),
        host_name,
        offered: offered.clone(),
    };
    let connect_error = |reason: String| Error::Connect {
        target: name.to_owned(),
        address: target.address.clone(),
        reason,
    };
    let config = Arc::new(client::Config {
        window_size: 16 * 1024 * 1024,
        maximum_packet_size: 65535,
        channel_buffer_size: 256,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        ..Default::default()
    });
    let timeout = target.connect_timeout;
    let (handshake, route, cut) = match &target.via {
        None => {
            let stream =
                tokio::time::timeout(timeout.0, tokio::net::TcpStream::connect(&target.address))
                    .await
                    .map_err(|_| connect_error(format!("no answer within {timeout}")))?
                    .map_err(|e| connect_error(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            let (stream, cut) = stream
                .into_std()
                .and_then(|socket| {
                    let cut = Cut(socket.try_clone()?);
                    Ok((tokio::net::TcpStream::from_std(socket)?, cut))
                })
                .map_err(|e| connect_error(e.to_string()))?;
            let handshake =
                tokio::time::timeout(timeout.0, client::connect_stream(config, stream, check))
                    .await;
            (handshake, None, Some(cut))
        }
        Some(via) => {
            let (host, port) = target
                .address
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
                .ok_or_else(|| connect_error("the address needs a port".into()))?;
            let route = tokio::time::timeout(
                timeout.0,
                crate::ecs::open_port(aws, &via.ssm_target, host, port),
            )
            .await
            .map_err(|_| connect_error(format!("no SSM port route within {timeout}")))?
            .map_err(|e| connect_error(format!("SSM port route via {}: {e}", via.ssm_target)))?;
            let stream = route.connect().await.map_err(|e| {
                connect_error(format!("SSM port route via {}: {e}", via.ssm_target))
            })?;
            let handshake =
                tokio::time::timeout(timeout.0, client::connect_stream(config, stream, check))
                    .await;
            (handshake, Some(route), None)
        }
    };
    let mut handle = match handshake {
        Err(_) => return Err(connect_error("the SSH handshake timed out".into())),
        Ok(Ok(handle)) => handle,
        Ok(Err(e)) => {
            let offered = lock(&offered).clone();
            return Err(match (e, offered) {
                (russh::Error::UnknownKey, Some(offered)) => Error::HostKeyMismatch {
                    target: name.to_owned(),
                    offered,
                },
                (e, _) => connect_error(e.to_string()),
            });
        }
    };
    let host_key = lock(&offered).clone().unwrap_or_default();
    let protocol = |e: russh::Error| Error::Protocol {
        target: name.to_owned(),
        reason: e.to_string(),
    };
    let result = match credential {
        Credential::TargetCa(ca) => {
            let key = crate::keys::generate();
            let cert =
                target_certificate(ca, key.public_key(), login, who, cert_ttl).map_err(|e| {
                    Error::Protocol {
                        target: name.to_owned(),
                        reason: format!("signing the target certificate: {e}"),
                    }
                })?;
            tokio::time::timeout(
                target.connect_timeout.0,
                handle.authenticate_openssh_cert(login, Arc::new(key), cert),
            )
            .await
            .map_err(|_| connect_error("authentication timed out".into()))?
            .map_err(protocol)?
        }
        Credential::Key(key) => {
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .ok()
                .flatten()
                .flatten();
            tokio::time::timeout(
                target.connect_timeout.0,
                handle.authenticate_publickey(
                    login,
                    russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key.clone()), hash),
                ),
            )
            .await
            .map_err(|_| connect_error("authentication timed out".into()))?
            .map_err(protocol)?
        }
    };
    if !result.success() {
        return Err(Error::AuthRefused {
            target: name.to_owned(),
            login: login.to_owned(),
        });
    }
    Ok(Upstream {
        handle,
        host_key,
        _cut: cut,
        route,
    })
}

/// A certificate for the broker's per-connection key: valid for minutes,
/// principal = the login, key id = the human's email.
fn target_certificate(
    ca: &PrivateKey,
    key: &PublicKey,
    login: &str,
    who: &OnBehalfOf<'_>,
    ttl: Duration,
) -> anyhow::Result<Certificate> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut builder = Builder::new(
        nonce.to_vec(),
        key.key_data().clone(),
        now.saturating_sub(60),
        now + ttl.as_secs(),
    )?;
    builder.serial(rand::rngs::OsRng.next_u64())?;
    builder.cert_type(CertType::User)?;
    builder.key_id(who.email.to_owned())?;
    builder.valid_principal(login.to_owned())?;
    builder.extension("permit-pty", "")?;
    if who.grants.port_forwarding {
        builder.extension("permit-port-forwarding", "")?;
    }
    if who.grants.agent_forwarding {
        builder.extension("permit-agent-forwarding", "")?;
    }
    if who.grants.x11_forwarding {
        builder.extension("permit-X11-forwarding", "")?;
    }
    builder.comment(format!("pam session {}", who.session_id))?;
    Ok(builder.sign(ca)?)
}
