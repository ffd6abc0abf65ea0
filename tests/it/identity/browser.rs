//! Browser logins: tokens, certificates and history; groups, MFA, verified emails, forged ID tokens and key rotation.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_login_issues_a_token_a_certificate_and_a_history_entry() {
    let app = app_with_idp("").await;
    let login = app.sso_login("alice").await.expect("login");
    let r = &login.response;
    assert_eq!(r.user, "alice@example.test");
    assert_eq!(r.groups, ["pam-admins", "engineers"]);
    assert!(r.mfa, "alice signs in with a second factor");
    assert_eq!(r.amr, ["pwd", "otp"]);

    // The certificate is for our key, names the user, and ends with the session.
    let cert = russh::keys::ssh_key::Certificate::from_openssh(&r.certificate).unwrap();
    assert_eq!(cert.key_id(), "alice@example.test");
    assert_eq!(cert.public_key(), login.key.public_key().key_data());
    let expires = time::OffsetDateTime::parse(
        &r.expires_at,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(cert.valid_before() as i64 <= expires.unix_timestamp());
    assert!(!cert.extensions().contains_key("permit-port-forwarding"));
    let ca = app
        .client
        .get(app.url("/api/v1/ca/ssh_user.pub"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ca = russh::keys::ssh_key::PublicKey::from_openssh(ca.trim()).unwrap();
    assert!(
        cert.validate([&ca.fingerprint(russh::keys::ssh_key::HashAlg::Sha256)])
            .is_ok()
    );
    assert!(
        r.known_hosts
            .starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", app.ssh.port()))
    );

    // The token works against the API.
    let whoami: serde_json::Value = app
        .client
        .get(app.url("/api/v1/auth/whoami"))
        .bearer_auth(&r.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(whoami["user"], "alice@example.test");

    let success = app.events("login.success").await;
    assert_eq!(success.len(), 1);
    assert_eq!(success[0].actor.as_deref(), Some("alice@example.test"));
    assert_eq!(success[0].source_ip.as_deref(), Some("127.0.0.1"));
    let details: serde_json::Value = serde_json::from_str(&success[0].details).unwrap();
    assert_eq!(details["idp_subject"], "alice");
    assert_eq!(details["amr"], serde_json::json!(["pwd", "otp"]));
    assert_eq!(details["method"], "sso");
    assert_eq!(app.events("token.issued").await.len(), 1);
    assert_eq!(app.events("ssh_cert.issued").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_come_from_the_groups_claim() {
    let app = app_with_idp("").await;
    let carol = app.sso_login("carol").await.expect("login").response;
    assert_eq!(carol.groups, ["sre", "engineers"]);
    let dave = app.sso_login("dave").await.expect("login").response;
    assert_eq!(dave.groups, ["analysts"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mfa_is_required_when_configured() {
    let app = app_with_idp("[oidc]\nrequire_mfa = true\n").await;
    let refused = app
        .sso_login("bob")
        .await
        .err()
        .expect("bob has no second factor");
    assert!(
        matches!(&refused, LoginFailure::Redirected(m) if m.contains("mfa required")),
        "{refused:?}"
    );
    assert!(app.sso_login("alice").await.is_ok());
    assert!(
        app.sso_login("carol").await.is_ok(),
        "hwk counts as a second factor"
    );
    let failures = app.event_details("login.failure").await;
    assert_eq!(failures.len(), 1);
    assert_eq!(reason_of(&failures[0]), "mfa required");
    assert_eq!(
        app.events("login.failure").await[0].actor.as_deref(),
        Some("bob@example.test")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_email_the_idp_says_is_verified_names_a_user() {
    let app = app_with_idp("").await;
    for user in ["unverified", "silent"] {
        let refused = app
            .sso_login(user)
            .await
            .err()
            .unwrap_or_else(|| panic!("{user}'s email is not verified"));
        assert!(
            matches!(&refused, LoginFailure::Redirected(m) if m.contains("verified")),
            "{user}: {refused:?}"
        );
    }
    app.sso_login("alice")
        .await
        .expect("a verified email logs in");
    let reasons: Vec<String> = app
        .event_details("login.failure")
        .await
        .iter()
        .map(reason_of)
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("not verified"), "{reasons:?}");
    assert!(reasons[1].contains("email_verified"), "{reasons:?}");
    assert!(app.events("login.success").await.len() == 1);

    // An IdP that never sends the claim: the operator opts out; an explicit
    // `false` is still refused.
    let lenient = app_with_idp("[oidc]\nrequire_email_verified = false\n").await;
    let silent = lenient.sso_login("silent").await.expect("opted out");
    assert_eq!(silent.response.user, "silent@example.test");
    assert!(lenient.sso_login("unverified").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_invalid_id_tokens_are_refused_and_audited() {
    let app = app_with_idp("").await;
    let idp = app.idp.as_ref().unwrap();
    let cases = [
        ("bad-signature", "bad signature"),
        ("alg-none", "alg"),
        ("hs256-pubkey", "HS256"),
        ("expired", "expired"),
        ("future-iat", "issued in the future"),
        ("wrong-aud", "wrong audience"),
        ("wrong-iss", "wrong issuer"),
        ("unknown-kid", "unknown signing key"),
        ("wrong-nonce", "wrong nonce"),
    ];
    for (mode, _) in cases {
        idp.forge(mode).await;
        let refused = app.sso_login("alice").await;
        assert!(
            matches!(&refused, Err(LoginFailure::Redirected(_))),
            "{mode}: expected a refusal, got {:?}",
            refused.as_ref().map(|l| &l.response.user)
        );
    }
    let failures = app.event_details("login.failure").await;
    assert_eq!(failures.len(), cases.len(), "{failures:#?}");
    for ((mode, needle), details) in cases.iter().zip(&failures) {
        let reason = reason_of(details);
        assert!(reason.starts_with("invalid_id_token"), "{mode}: {reason}");
        assert!(
            reason.to_lowercase().contains(&needle.to_lowercase()),
            "{mode}: {reason}"
        );
    }
    assert!(app.events("login.success").await.is_empty());
    assert!(app.events("token.issued").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_signing_key_is_fetched_from_the_jwks() {
    let app = app_with_idp("").await;
    app.sso_login("alice")
        .await
        .expect("first login caches the JWKS");
    app.idp.as_ref().unwrap().forge("rotate-key").await;
    app.sso_login("alice")
        .await
        .expect("a token signed with a key published after discovery is accepted");
}
