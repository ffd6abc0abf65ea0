//! Break-glass accounts: local emergency logins for when the IdP is down.
//! A password (argon2id) and a TOTP code, each use loudly audited.
//!
//! TOTP secrets are stored encrypted (AES-256-GCM under a key derived from
//! the broker's key material), so a copy of the database alone does not
//! yield second factors.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use rand::Rng;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use secrecy::{ExposeSecret, SecretString};
use totp_rs::{Builder, Secret, Totp};

/// A new account's secrets, shown once.
pub struct Enrolment {
    pub password: SecretString,
    pub totp_secret_base32: SecretString,
    pub otpauth_url: SecretString,
    pub password_hash: String,
    pub totp_secret_enc: Vec<u8>,
}

const PASSWORD_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";

/// Creates the secrets of a new account. `key` encrypts the TOTP secret.
pub fn enrol(username: &str, key: &[u8; 32]) -> anyhow::Result<Enrolment> {
    let mut rng = rand::rngs::OsRng;
    let password: String = (0..24)
        .map(|_| PASSWORD_ALPHABET[rng.gen_range(0..PASSWORD_ALPHABET.len())] as char)
        .collect();
    let mut secret = [0u8; 20];
    rng.fill(&mut secret);
    let totp = totp(&secret, username)?;
    let password_hash = hash_password(&password)?;
    Ok(Enrolment {
        totp_secret_base32: SecretString::from(Secret::from(secret.to_vec()).to_base32()),
        otpauth_url: SecretString::from(totp.to_url().unwrap_or_default()),
        password: SecretString::from(password),
        password_hash,
        totp_secret_enc: seal(key, &secret)?,
    })
}

pub fn hash_password(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
}

pub fn password_matches(password: &SecretString, hash: &str) -> bool {
    PasswordHash::new(hash).ok().is_some_and(|parsed| {
        Argon2::default()
            .verify_password(password.expose_secret().as_bytes(), &parsed)
            .is_ok()
    })
}

/// The TOTP step `code` is valid for (±1 step of skew), if any.
pub fn check_totp(
    sealed: &[u8],
    key: &[u8; 32],
    username: &str,
    code: &str,
    now: u64,
) -> Option<u64> {
    let secret = open(key, sealed).ok()?;
    totp(&secret, username).ok()?.check(code.trim(), now)
}

/// The current TOTP code for a base32 secret (tests and dev tooling).
pub fn current_code(secret_base32: &str, now: u64) -> anyhow::Result<String> {
    let secret = Secret::try_from_base32(secret_base32)
        .map_err(|e| anyhow::anyhow!("invalid TOTP secret: {e}"))?;
    Ok(totp(secret.as_ref(), "pam")?.generate(now).to_string())
}

fn totp(secret: &[u8], username: &str) -> anyhow::Result<Totp> {
    Builder::new()
        .with_secret(secret.to_vec())
        .with_account_name(username)
        .with_issuer(Some("pam break-glass"))
        .build()
        .map_err(|e| anyhow::anyhow!("building TOTP: {e}"))
}

fn seal(key: &[u8; 32], plaintext: &[u8]) -> anyhow::Result<Vec<u8>> {
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key).map_err(|_| anyhow::anyhow!("bad AEAD key"))?,
    );
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill(&mut nonce);
    let mut buffer = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::empty(),
        &mut buffer,
    )
    .map_err(|_| anyhow::anyhow!("sealing failed"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buffer);
    Ok(out)
}

fn open(key: &[u8; 32], sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
    if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
        anyhow::bail!("sealed secret too short");
    }
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key).map_err(|_| anyhow::anyhow!("bad AEAD key"))?,
    );
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce =
        Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow::anyhow!("bad nonce"))?;
    let mut buffer = body.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::empty(), &mut buffer)
        .map_err(|_| anyhow::anyhow!("the sealed secret does not open with this key"))?;
    Ok(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrolment_round_trip() {
        let key = [7u8; 32];
        let enrolment = enrol("admin", &key).unwrap();
        assert!(password_matches(
            &enrolment.password,
            &enrolment.password_hash
        ));
        assert!(!password_matches(
            &SecretString::from("wrong".to_owned()),
            &enrolment.password_hash
        ));
        let now = 1_800_000_000;
        let code = current_code(enrolment.totp_secret_base32.expose_secret(), now).unwrap();
        let step = check_totp(&enrolment.totp_secret_enc, &key, "admin", &code, now).unwrap();
        assert_eq!(step, now / 30);
        assert!(check_totp(&enrolment.totp_secret_enc, &[8u8; 32], "admin", &code, now).is_none());
        assert!(check_totp(&enrolment.totp_secret_enc, &key, "admin", &code, now + 300).is_none());
        assert!(
            enrolment
                .otpauth_url
                .expose_secret()
                .starts_with("otpauth://totp/")
        );
    }
}
