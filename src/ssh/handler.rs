//! The russh handler of one client connection: authentication with a
//! broker-signed certificate, the target chosen by the SSH username, and
//! channel openings handed to their relay tasks. Kept thin on purpose.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::Certificate;
use russh::keys::ssh_key::HashAlg;
use russh::keys::ssh_key::certificate::CertType;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use serde_json::json;
use tokio_util::task::TaskTracker;

use super::Shared;
use super::channel::{self, UpstreamCell};
use super::forward;
use super::upstream::{self, Credential, OnBehalfOf, Upstream};
use crate::config::{Credential as CredentialSource, TargetConfig, TargetKind};
use crate::domain::audit::{AuditEvent, EventKind, Outcome};
use crate::domain::policy::{Action, RequestContext, Resource};
use crate::domain::principal::Principal;
use crate::edge::Unauthenticated;
use crate::identity::AuthError;
use crate::identity::cert::SESSION_EXTENSION;
use crate::metrics::Metrics;
use crate::sync::lock;

/// An authenticated client: who, and where to.
pub(crate) struct Authed {
    pub principal: Principal,
    pub target: TargetConfig,
    pub login: String,
    pub peer: SocketAddr,
    pub client: Option<String>,
    /// Reason given in the username (`LOGIN@TARGET` has none; PAM_REASON
    /// over SendEnv is read per channel).
    pub reason: Option<String>,
}

pub(crate) struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
    announced: Option<String>,
    authed: Option<Arc<Authed>>,
    upstream: UpstreamCell,
    state: Arc<Mutex<State>>,
    channels: TaskTracker,
    /// This connection's place among its source's unauthenticated ones;
    /// given back on authentication.
    slot: Option<Unauthenticated>,
    authenticated: tokio::sync::watch::Sender<bool>,
}

/// What the end-of-connection audit needs to know.
#[derive(Default)]
struct State {
    user: Option<String>,
    /// What the client tried, in order (bounded).
    tried: Vec<String>,
    /// Tries beyond those listed.
    tried_more: u32,
    /// Why the most telling try was refused (a certificate's reason wins
    /// over a plain key's).
    reason: Option<String>,
    /// The email a refused certificate named.
    actor: Option<String>,
    authenticated: bool,
    timed_out: bool,
    /// The store did not answer when authentication began.
    store_down: bool,
}

/// Attempts listed in a connection's failure event.
const MAX_TRIED: usize = 8;
/// How long a refused certificate costs the client: a guesser gets few
/// tries per second per connection, and every refusal takes the same time.
const REJECTION_DELAY: Duration = Duration::from_millis(300);

/// How long the store may take to answer before authentication starts.
const STORE_PROBE: Duration = Duration::from_secs(2);

/// The banner a client gets when the broker cannot reach its store: SSH has
/// no text in an authentication failure, so without it the user would see
/// only "Permission denied (publickey)" and suspect their credentials.
const STORE_DOWN_BANNER: &str = "pam: refused: the broker cannot reach its store (the audit \
     trail and sessions), so every login is refused until the store is back. Your credentials are fine: \
     try again later, or tell the broker's operators.\r\n";

/// Held by the connection task: audits a connection that never
/// authenticated (one `login.failure` with everything it tried), and
/// waits for its channels.
pub(crate) struct Watch {
    shared: Arc<Shared>,
    peer: SocketAddr,
    state: Arc<Mutex<State>>,
    channels: TaskTracker,
    authenticated: tokio::sync::watch::Sender<bool>,
}

impl Watch {
    pub fn new(shared: Arc<Shared>, peer: SocketAddr) -> Self {
        Self {
            shared,
            peer,
            state: Arc::new(Mutex::new(State::default())),
            channels: TaskTracker::new(),
            authenticated: tokio::sync::watch::Sender::new(false),
        }
    }

    /// The russh handler of this connection.
    pub fn connection(&self, announced: Option<String>, slot: Unauthenticated) -> Connection {
        Connection {
            shared: self.shared.clone(),
            peer: self.peer,
            announced,
            authed: None,
            upstream: Arc::new(tokio::sync::OnceCell::new()),
            state: self.state.clone(),
            channels: self.channels.clone(),
            slot: Some(slot),
            authenticated: self.authenticated.clone(),
        }
    }

    /// Becomes true when the client has authenticated.
    pub fn authenticated(&self) -> tokio::sync::watch::Receiver<bool> {
        self.authenticated.subscribe()
    }

    /// The connection did not authenticate within `server.auth_timeout`.
    pub fn timed_out(&self) {
        lock(&self.state).timed_out = true;
    }

    /// Called when the connection ends: a connection that never
    /// authenticated is one failed login, with what it tried.
    pub async fn finish(self) {
        self.channels.close();
        self.channels.wait().await;
        let (event, tried) = {
            let state = lock(&self.state);
            if state.authenticated || (state.tried.is_empty() && !state.timed_out) {
                return;
            }
            let reason = match (&state.reason, state.timed_out) {
                (Some(reason), false) => reason.clone(),
                (Some(reason), true) => {
                    format!("no authentication within server.auth_timeout; last refusal: {reason}")
                }
                (None, true) => "no authentication within server.auth_timeout".to_owned(),
                (None, false) => "no valid broker certificate (expired, not yet valid, or a plain key); run `pam login`".to_owned(),
            };
            let methods: Vec<&str> = state
                .tried
                .iter()
                .map(|t| t.split(' ').next().unwrap_or_default())
                .collect();
            let tried = format!(
                "ssh user {:?}: {}",
                state.user.as_deref().unwrap_or_default(),
                if methods.is_empty() {
                    "nothing".to_owned()
                } else {
                    methods.join(", ")
                }
            );
            let mut event = AuditEvent::new(EventKind::LoginFailure, Outcome::Failure)
                .source_ip(Some(self.peer.ip()))
                .details(json!({
                    "method": "ssh",
                    "reason": reason,
                    "ssh_user": state.user,
                    "tried": state.tried,
                    "tried_more": state.tried_more,
                    "timed_out": state.timed_out,
                }));
            if let Some(actor) = &state.actor {
                event = event.actor(actor);
            }
            (event, tried)
        };
        Metrics::inc(&self.shared.deps.metrics.logins_failure);
        self.shared.deps.edge.failure(event, &tried).await;
    }
}

impl Connection {
    fn note_user(&self, user: &str) {
        lock(&self.state).user = Some(user.chars().take(128).collect());
    }

    /// Remembers one try for the connection's failure event.
    fn note_try(&self, user: &str, what: String) {
        let mut state = lock(&self.state);
        state.user = Some(user.chars().take(128).collect());
        if state.tried.len() < MAX_TRIED {
            state.tried.push(what.chars().take(256).collect());
        } else {
            state.tried_more += 1;
        }
    }

    /// Refuses a certificate. Not yet a failed login (the client may go on
    /// to a valid one): the connection's failure event, if it never
    /// authenticates, says why. A refused certificate is slowed down.
    async fn refuse(&self, user: &str, actor: Option<&str>, reason: &str) -> Auth {
        self.note_try(user, format!("certificate: {reason}"));
        {
            let mut state = lock(&self.state);
            state.reason = Some(reason.to_owned());
            if let Some(actor) = actor {
                state.actor = Some(actor.to_owned());
            }
        }
        tracing::info!(user, reason, "ssh certificate refused");
        Metrics::inc(&self.shared.deps.metrics.ssh_auth_delays);
        tokio::time::sleep(REJECTION_DELAY).await;
        Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        }
    }

    /// The authenticated client, if its broker session is still live: every
    /// channel open asks the store again (not the principal cached at
    /// login), so after `pam logout` or a revocation no new channel opens.
    /// A refusal is recorded as `token.rejected`; its reason is returned
    /// so the client can be told.
    async fn live(&self, channel: &str) -> Result<Arc<Authed>, &'static str> {
        let Some(authed) = self.authed.clone() else {
            return Err("the connection is not authenticated");
        };
        let principal = &authed.principal;
        let reason = match self
            .shared
            .deps
            .identity
            .session(&principal.session_id)
            .await
        {
            Ok(_) => return Ok(authed),
            Err(AuthError::Revoked) => "the broker session was revoked",
            Err(AuthError::Expired) => "the broker session has expired",
            Err(AuthError::Unavailable) => "the broker session could not be checked",
            Err(_) => "the broker session is unknown",
        };
        tracing::info!(channel, reason, "channel refused");
        self.shared
            .deps
            .audit
            .note(
                AuditEvent::new(EventKind::TokenRejected, Outcome::Denied)
                    .actor(principal.email())
                    .source_ip(Some(authed.peer.ip()))
                    .target(&authed.target.name)
                    .session(&principal.session_id)
                    .details(json!({
                        "method": "ssh",
                        "channel": channel,
                        "reason": reason,
                    })),
            )
            .await;
        Err(reason)
    }

    /// `TARGET`, `LOGIN@TARGET`, or the login alone when `pam ssh-proxy`
    /// announced the target (`-` = the target's default login).
    fn parse_user<'a>(&'a self, user: &'a str) -> (Option<&'a str>, &'a str) {
        super::username::split(user, self.announced.as_deref())
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    /// Sent once, before the first authentication request is answered:
    /// while the store is unreachable every login is refused (the broker
    /// session cannot be checked, nothing can be recorded), at once, and
    /// this says why instead of a bare "Permission denied". OpenSSH prints it.
    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        let answers = tokio::time::timeout(STORE_PROBE, self.shared.deps.audit.ping())
            .await
            .unwrap_or(false);
        if answers {
            return Ok(None);
        }
        tracing::warn!("the store does not answer: SSH clients are told so in a banner");
        lock(&self.state).store_down = true;
        Ok(Some(STORE_DOWN_BANNER.to_owned()))
    }

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        self.note_user(user);
        Ok(Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        })
    }

    /// A plain key: the broker takes only its own certificates. OpenSSH
    /// offers the key before its certificate on every login, so this is
    /// answered at once and is no failed login by itself.
    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.note_try(
            user,
            format!(
                "publickey {} {}",
                key.public_key.algorithm(),
                key.public_key.fingerprint(HashAlg::Sha256)
            ),
        );
        {
            let mut state = lock(&self.state);
            if state.reason.is_none() {
                state.reason = Some(
                    "no valid broker certificate (a plain key, or a certificate that is expired or not yet valid); run `pam login`"
                        .into(),
                );
            }
        }
        Ok(Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        })
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        cert: &Certificate,
    ) -> Result<Auth, Self::Error> {
        self.note_user(user);
        let email = cert.key_id().to_owned();
        if cert.cert_type() != CertType::User {
            return Ok(self.refuse(user, None, "not a user certificate").await);
        }
        if cert.validate([&self.shared.user_ca_fingerprint]).is_err() {
            return Ok(self
                .refuse(
                    user,
                    None,
                    "certificate not signed by the broker's user CA (or outside its validity)",
                )
                .await);
        }
        // The store did not answer at the start of this connection: refused
        // at once rather than after the store's own timeouts.
        if lock(&self.state).store_down {
            return Ok(self
                .refuse(
                    user,
                    Some(&email),
                    "the broker cannot reach its audit store",
                )
                .await);
        }
        let Some(session_id) = cert.extensions().get(SESSION_EXTENSION) else {
            return Ok(self
                .refuse(user, Some(&email), "certificate without a broker session")
                .await);
        };
        // A store connection reset mid-query is retried for up to 2 s
        // before the login is refused.
        let mut lookup = self.shared.deps.identity.session(session_id).await;
        let retry_until = tokio::time::Instant::now() + Duration::from_secs(2);
        while matches!(lookup, Err(AuthError::Unavailable))
            && tokio::time::Instant::now() < retry_until
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
            lookup = self.shared.deps.identity.session(session_id).await;
        }
        let principal = match lookup {
            Ok(principal) => principal,
            Err(AuthError::Revoked) => {
                return Ok(self
                    .refuse(user, Some(&email), "the broker session was revoked")
                    .await);
            }
            Err(AuthError::Expired) => {
                return Ok(self
                    .refuse(user, Some(&email), "the broker session has expired")
                    .await);
            }
            Err(e) => return Ok(self.refuse(user, Some(&email), &e.to_string()).await),
        };
        if principal.email() != email {
            return Ok(self
                .refuse(
                    user,
                    Some(&email),
                    "certificate key id does not match its broker session",
                )
                .await);
        }
        let (login, target_name) = self.parse_user(user);
        let Some(target) = self.shared.deps.targets.get(target_name) else {
            return Ok(self
                .refuse(
                    user,
                    Some(&email),
                    &format!("unknown target {target_name:?}"),
                )
                .await);
        };
        let login = match (&target.kind, login) {
            (TargetKind::Ssh(ssh), Some(login)) => {
                if login != ssh.login && !ssh.logins.iter().any(|l| l == login) {
                    return Ok(self
                        .refuse(
                            user,
                            Some(&email),
                            &format!("login {login:?} is not offered by target {target_name}"),
                        )
                        .await);
                }
                login.to_owned()
            }
            (TargetKind::Ssh(ssh), None) => ssh.login.clone(),
            // An ECS container behaves like a host; its user is the image's.
            (TargetKind::Ecs(_), None) => "-".to_owned(),
            _ => {
                return Ok(self
                    .refuse(
                        user,
                        Some(&email),
                        &format!("target {target_name} is not reachable over SSH"),
                    )
                    .await);
            }
        };
        lock(&self.state).authenticated = true;
        // Authenticated: no longer counts against the source's cap, and no
        // longer bound by server.auth_timeout.
        self.slot.take();
        self.authenticated.send_replace(true);
        self.authed = Some(Arc::new(Authed {
            principal,
            target,
            login,
            peer: self.peer,
            client: None,
            reason: None,
        }));
        Ok(Auth::Accept)
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        let client = String::from_utf8_lossy(session.remote_sshid())
            .trim()
            .to_owned();
        if let Some(authed) = self.authed.take() {
            let authed = Authed {
                principal: authed.principal.clone(),
                target: authed.target.clone(),
                login: authed.login.clone(),
                peer: authed.peer,
                client: Some(client),
                reason: authed.reason.clone(),
            };
            self.authed = Some(Arc::new(authed));
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let authed = match self.live("session").await {
            Ok(authed) => authed,
            Err(reason) => {
                // Accepted only to say why (OpenSSH prints a channel's
                // stderr, not a reason for a refused open), then closed.
                reply.accept().await;
                self.channels.spawn(async move {
                    let message = format!("pam: refused: {reason}\r\n");
                    let _ = channel.extended_data_bytes(1, message.into_bytes()).await;
                    let _ = channel.exit_status(255).await;
                    let _ = channel.eof().await;
                    let _ = channel.close().await;
                });
                return Ok(());
            }
        };
        reply.accept().await;
        let shared = self.shared.clone();
        let upstream = self.upstream.clone();
        let handle = session.handle();
        self.channels
            .spawn(channel::run(shared, authed, upstream, channel, handle));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Ok(authed) = self.live("direct-tcpip").await else {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let to = forward::Destination {
            host: host_to_connect.to_owned(),
            port: port_to_connect,
            originator: originator_address.to_owned(),
            originator_port,
        };
        self.channels.spawn(forward::run(
            self.shared.clone(),
            authed,
            self.upstream.clone(),
            channel,
            reply,
            to,
        ));
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if let Some(authed) = self.authed.clone() {
            channel::refuse_forward(&self.shared, &authed, "agent").await;
        }
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if let Some(authed) = self.authed.clone() {
            channel::refuse_forward(&self.shared, &authed, "remote-tcp").await;
        }
        Ok(false)
    }
}

/// Opens the broker's connection to the target for this client connection.
pub(crate) async fn connect_upstream(
    shared: &Shared,
    authed: &Authed,
) -> Result<Upstream, upstream::Error> {
    let TargetKind::Ssh(ssh) = &authed.target.kind else {
        return Err(upstream::Error::Protocol {
            target: authed.target.name.clone(),
            reason: "not an SSH target".into(),
        });
    };
    let credential = match &ssh.credential {
        CredentialSource::BrokerCa => Credential::TargetCa(shared.deps.target_ca.clone()),
        other => {
            return Err(upstream::Error::Protocol {
                target: authed.target.name.clone(),
                reason: format!(
                    "credential source {other:?} is not available for SSH targets in this build"
                ),
            });
        }
    };
    let grants = forwarding_grants(shared, authed).await;
    let who = OnBehalfOf {
        email: authed.principal.email(),
        session_id: &authed.principal.session_id,
        grants,
    };
    let result = upstream::connect(
        &authed.target.name,
        ssh,
        &authed.login,
        &credential,
        &who,
        shared.deps.target_cert_ttl,
        &shared.deps.aws,
    )
    .await;
    if let Err(upstream::Error::HostKeyMismatch { offered, .. }) = &result {
        shared
            .deps
            .audit
            .note(
                AuditEvent::new(EventKind::SshHostKeyMismatch, Outcome::Denied)
                    .actor(authed.principal.email())
                    .source_ip(Some(authed.peer.ip()))
                    .target(&authed.target.name)
                    .details(json!({
                        "address": ssh.address,
                        "offered": offered,
                        "pinned": ssh.host_key,
                        "host_ca": ssh.host_ca,
                    })),
            )
            .await;
    }
    result
}

/// Forwarding the target certificate may allow: whatever policy grants
/// for this target (the broker still checks each forward as it comes).
async fn forwarding_grants(
    shared: &Shared,
    authed: &Authed,
) -> crate::domain::principal::CertGrants {
    let resource = Resource::Target(authed.target.to_ref());
    let allowed = |forward: &str| {
        let context = RequestContext {
            forward: Some(forward.into()),
            login: Some(authed.login.clone()),
            ..RequestContext::default()
        };
        shared
            .deps
            .gate
            .peek(
                &authed.principal.identity,
                Action::SshForward,
                &resource,
                &context,
            )
            .is_ok()
    };
    crate::domain::principal::CertGrants {
        principals: vec![authed.login.clone()],
        port_forwarding: allowed("tcp"),
        agent_forwarding: false,
        x11_forwarding: false,
    }
}
