//! End-to-end encryption of a data channel with a KMS data key
//! (docs/aws-protocols.md 1.11): AES-256-GCM, `nonce ‖ ciphertext ‖ tag`, no AAD.
//!
//! The client asks KMS for 64 bytes of key material bound to the session
//! (encryption context `aws:ssm:SessionId` and `aws:ssm:TargetId`); the
//! first half decrypts what the agent sends, the second half encrypts what
//! the client sends. KMS itself is reached through the [`DataKeys`]
//! callback, so this module names no AWS SDK type and tests can inject keys.

use std::fmt;

use futures_util::future::BoxFuture;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use secrecy::{ExposeSecret, SecretSlice};

/// Bytes of key material the client asks KMS for.
pub const DATA_KEY_BYTES: usize = 64;
const TAG_LEN: usize = 16;

/// What the channel asks its [`DataKeys`] provider for.
#[derive(Debug, Clone, Copy)]
pub struct DataKeyRequest<'a> {
    /// The KMS key the agent named in its handshake.
    pub key_id: &'a str,
    /// Encryption context `aws:ssm:SessionId`.
    pub session_id: &'a str,
    /// Encryption context `aws:ssm:TargetId`.
    pub target_id: &'a str,
}

/// A freshly generated data key: plaintext (secret) and the KMS ciphertext
/// blob the agent decrypts.
pub struct DataKey {
    pub plaintext: SecretSlice<u8>,
    pub ciphertext_blob: Vec<u8>,
}

/// Generates data keys (`kms:GenerateDataKey`, 64 bytes, with the request's
/// encryption context). The error is shown to the agent and the caller as
/// one line, so it must not contain secrets.
pub trait DataKeys: Send + Sync {
    fn generate<'a>(
        &'a self,
        request: DataKeyRequest<'a>,
    ) -> BoxFuture<'a, Result<DataKey, Box<dyn std::error::Error + Send + Sync>>>;
}

/// The two AES-256-GCM keys of one session.
pub struct Cipher {
    encrypt: LessSafeKey,
    decrypt: LessSafeKey,
}

/// Why sealing or opening failed (deliberately without detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the data key has {0} bytes, expected {DATA_KEY_BYTES}")]
    KeyLength(usize),
    #[error("encrypting a payload failed")]
    Seal,
    #[error("a payload failed authentication")]
    Open,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("plaintext", &"[redacted]")
            .field("ciphertext_blob_len", &self.ciphertext_blob.len())
            .finish()
    }
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cipher([redacted])")
    }
}

impl Cipher {
    /// The client's view of a data key: it decrypts with the first half and
    /// encrypts with the second.
    pub fn client(plaintext: &SecretSlice<u8>) -> Result<Cipher, Error> {
        Self::split(plaintext.expose_secret(), false)
    }

    /// The agent's view (for test agents): the halves swapped.
    pub fn agent(plaintext: &SecretSlice<u8>) -> Result<Cipher, Error> {
        Self::split(plaintext.expose_secret(), true)
    }

    fn split(key: &[u8], agent: bool) -> Result<Cipher, Error> {
        if key.len() != DATA_KEY_BYTES {
            return Err(Error::KeyLength(key.len()));
        }
        let (first, second) = key.split_at(DATA_KEY_BYTES / 2);
        let (decrypt, encrypt) = if agent {
            (second, first)
        } else {
            (first, second)
        };
        let key = |bytes: &[u8]| {
            UnboundKey::new(&AES_256_GCM, bytes)
                .map(LessSafeKey::new)
                .map_err(|_| Error::KeyLength(bytes.len()))
        };
        Ok(Cipher {
            encrypt: key(encrypt)?,
            decrypt: key(decrypt)?,
        })
    }

    /// Encrypts the concatenation of `parts` with a fresh random nonce.
    pub fn seal(&self, parts: &[&[u8]]) -> Result<Vec<u8>, Error> {
        let length: usize = parts.iter().map(|part| part.len()).sum();
        let mut out = Vec::with_capacity(NONCE_LEN + length + TAG_LEN);
        let mut nonce = [0u8; NONCE_LEN];
        rand::RngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut nonce)
            .map_err(|_| Error::Seal)?;
        out.extend_from_slice(&nonce);
        for part in parts {
            out.extend_from_slice(part);
        }
        let tag = self
            .encrypt
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| Error::Seal)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts `nonce ‖ ciphertext ‖ tag`.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(Error::Open);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::Open)?;
        let mut buffer = ciphertext.to_vec();
        let plaintext_len = self
            .decrypt
            .open_in_place(nonce, Aad::empty(), &mut buffer)
            .map_err(|_| Error::Open)?
            .len();
        buffer.truncate(plaintext_len);
        Ok(buffer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SecretSlice<u8> {
        SecretSlice::from((0..64).map(|i| i as u8 ^ seed).collect::<Vec<u8>>())
    }

    #[test]
    fn client_and_agent_talk_both_ways() {
        let client = Cipher::client(&key(7)).unwrap();
        let agent = Cipher::agent(&key(7)).unwrap();
        let sealed = client.seal(&[b"hello ", b"agent"]).unwrap();
        assert_eq!(sealed.len(), 12 + 11 + 16);
        assert_eq!(agent.open(&sealed).unwrap(), b"hello agent");
        let reply = agent.seal(&[b"hi"]).unwrap();
        assert_eq!(client.open(&reply).unwrap(), b"hi");
        // A client cannot read its own direction back: the halves differ.
        assert_eq!(client.open(&sealed), Err(Error::Open));
        // Nonces are fresh.
        assert_ne!(client.seal(&[b"x"]).unwrap(), client.seal(&[b"x"]).unwrap());
    }

    #[test]
    fn tampering_and_bad_keys_are_rejected() {
        let client = Cipher::client(&key(1)).unwrap();
        let agent = Cipher::agent(&key(1)).unwrap();
        let mut sealed = agent.seal(&[b"payload"]).unwrap();
        for i in 0..sealed.len() {
            sealed[i] ^= 0x80;
            assert_eq!(client.open(&sealed), Err(Error::Open), "byte {i}");
            sealed[i] ^= 0x80;
        }
        assert_eq!(client.open(&sealed).unwrap(), b"payload");
        for len in 0..28 {
            assert_eq!(client.open(&sealed[..len]), Err(Error::Open));
        }
        let other = Cipher::client(&key(2)).unwrap();
        assert_eq!(other.open(&sealed), Err(Error::Open));
        let short = SecretSlice::from(vec![0u8; 32]);
        assert_eq!(Cipher::client(&short).unwrap_err(), Error::KeyLength(32));
        assert_eq!(format!("{client:?}"), "Cipher([redacted])");
    }
}
