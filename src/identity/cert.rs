//! OpenSSH user certificates: proof that the caller holds the private key,
//! and the signed certificate itself.

use rand::RngCore;
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::{Certificate, HashAlg, PrivateKey, PublicKey, SshSig};

use crate::domain::principal::{CertGrants, UserIdentity};

/// The sshsig namespace of login proofs (`ssh-keygen -Y sign -n pam-login@pam`).
pub const PROOF_NAMESPACE: &str = "pam-login@pam";

/// Certificate extension carrying the broker session id, so the SSH room can
/// check revocation for every connection.
pub const SESSION_EXTENSION: &str = "pam-session@pam";

/// What a client signs to prove it holds the key it asks a certificate for.
pub fn proof_message(context: &str, public_key: &str) -> Vec<u8> {
    format!("pam-login-v1\n{context}\n{}\n", public_key.trim()).into_bytes()
}

/// Signs a login proof (client side).
pub fn sign_proof(key: &PrivateKey, context: &str) -> anyhow::Result<String> {
    let public = key.public_key().to_openssh()?;
    let signature = key.sign(
        PROOF_NAMESPACE,
        HashAlg::Sha512,
        &proof_message(context, &public),
    )?;
    Ok(signature.to_pem(russh::keys::ssh_key::LineEnding::LF)?)
}

/// Parses an OpenSSH public key line and checks the proof signed over it.
pub fn verify_proof(public_key: &str, context: &str, proof: &str) -> Result<PublicKey, String> {
    let key = PublicKey::from_openssh(public_key.trim())
        .map_err(|_| "the public key is not an OpenSSH public key".to_owned())?;
    if !matches!(
        key.algorithm(),
        russh::keys::ssh_key::Algorithm::Ed25519 | russh::keys::ssh_key::Algorithm::Ecdsa { .. }
    ) {
        return Err("only ed25519 and ecdsa keys are accepted".into());
    }
    let signature =
        SshSig::from_pem(proof).map_err(|_| "the proof is not an SSH signature".to_owned())?;
    key.verify(
        PROOF_NAMESPACE,
        &proof_message(context, public_key),
        &signature,
    )
    .map_err(|_| "the proof was not signed by the key in the request".to_owned())?;
    Ok(key)
}

/// A signed user certificate and the facts worth auditing about it.
pub struct Issued {
    pub certificate: Certificate,
    pub serial: u64,
    pub valid_before: u64,
}

/// Signs a user certificate: key id = email, valid until `valid_before`
/// (never longer than the broker session), forwarding only as granted.
pub fn sign_user_certificate(
    ca: &PrivateKey,
    subject: &PublicKey,
    identity: &UserIdentity,
    session_id: &str,
    grants: &CertGrants,
    valid_before: u64,
) -> anyhow::Result<Issued> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let serial = rand::rngs::OsRng.next_u64();
    // Valid from a minute ago: clocks of clients and targets drift.
    let mut builder = Builder::new(
        nonce.to_vec(),
        subject.key_data().clone(),
        now.saturating_sub(60),
        valid_before,
    )?;
    builder.serial(serial)?;
    builder.cert_type(CertType::User)?;
    builder.key_id(identity.email.clone())?;
    let mut principals = grants.principals.clone();
    if principals.is_empty() {
        principals.push(identity.email.clone());
    }
    for principal in principals {
        builder.valid_principal(principal)?;
    }
    builder.extension("permit-pty", "")?;
    if grants.agent_forwarding {
        builder.extension("permit-agent-forwarding", "")?;
    }
    if grants.port_forwarding {
        builder.extension("permit-port-forwarding", "")?;
    }
    if grants.x11_forwarding {
        builder.extension("permit-X11-forwarding", "")?;
    }
    builder.extension(SESSION_EXTENSION, session_id)?;
    builder.comment(format!("pam {}", identity.email))?;
    let certificate = builder.sign(ca)?;
    Ok(Issued {
        certificate,
        serial,
        valid_before,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::principal::LoginMethod;

    fn identity() -> UserIdentity {
        UserIdentity {
            email: "alice@example.test".into(),
            subject: "alice".into(),
            name: None,
            groups: vec![],
            amr: vec![],
            mfa: false,
            method: LoginMethod::Sso,
        }
    }

    #[test]
    fn proofs_bind_key_and_context() {
        let key = crate::keys::generate();
        let public = key.public_key().to_openssh().unwrap();
        let proof = sign_proof(&key, "code-1").unwrap();
        assert!(verify_proof(&public, "code-1", &proof).is_ok());
        assert!(verify_proof(&public, "code-2", &proof).is_err());
        let other = crate::keys::generate().public_key().to_openssh().unwrap();
        assert!(verify_proof(&other, "code-1", &proof).is_err());
        assert!(verify_proof(&public, "code-1", "garbage").is_err());
    }

    #[test]
    fn certificates_carry_identity_and_limits() {
        let ca = crate::keys::generate();
        let user = crate::keys::generate();
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
        let issued = sign_user_certificate(
            &ca,
            user.public_key(),
            &identity(),
            "jti-1",
            &CertGrants {
                principals: vec!["alice".into()],
                ..CertGrants::default()
            },
            now + 3600,
        )
        .unwrap();
        let cert = issued.certificate;
        assert_eq!(cert.key_id(), "alice@example.test");
        assert_eq!(cert.valid_principals(), ["alice".to_owned()]);
        assert_eq!(
            cert.extensions().get(SESSION_EXTENSION).map(String::as_str),
            Some("jti-1")
        );
        assert!(cert.extensions().contains_key("permit-pty"));
        assert!(!cert.extensions().contains_key("permit-port-forwarding"));
        let fingerprint = ca.public_key().fingerprint(HashAlg::Sha256);
        assert!(cert.validate([&fingerprint]).is_ok());
    }
}
