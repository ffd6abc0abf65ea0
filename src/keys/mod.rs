//! Key material: generated on first start into the keys directory (mode 0600)
//! and reused after.
//!
//! Every key is Ed25519 and stored in OpenSSH private-key format, so operators
//! can inspect them with `ssh-keygen -y -f`. A file that exists but does not
//! parse is an error, never silently replaced: replacing a CA would lock every
//! user and target out, replacing the audit key would orphan its checkpoints.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use rand::RngCore;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey};
use sha2::{Digest, Sha256};

/// The broker's keys, loaded once at start.
#[derive(Clone)]
pub struct KeyMaterial {
    /// Signs broker session tokens (JWT, EdDSA).
    pub token_signing: Ed25519Key,
    /// Signs the short-lived user certificates `pam login` receives.
    pub ssh_user_ca: PrivateKey,
    /// Signs the certificates the broker presents to targets.
    pub ssh_target_ca: PrivateKey,
    /// The SSH room's host key.
    pub ssh_host: PrivateKey,
    /// Signs audit checkpoints.
    pub audit: Ed25519Key,
}

/// An Ed25519 key pair whose secret half never prints.
#[derive(Clone)]
pub struct Ed25519Key {
    seed: [u8; 32],
    public: [u8; 32],
}

const FILES: [&str; 5] = [
    "token_signing_ed25519",
    "ssh_user_ca",
    "ssh_target_ca",
    "ssh_host_ed25519",
    "audit_checkpoint_ed25519",
];

impl KeyMaterial {
    /// Loads every key from `dir`, generating the missing ones. Returns the
    /// names of the keys generated now.
    pub fn load_or_generate(dir: &Path) -> anyhow::Result<(Self, Vec<&'static str>)> {
        create_private_dir(dir)?;
        let mut generated = Vec::new();
        let mut keys = Vec::with_capacity(FILES.len());
        for name in FILES {
            let path = dir.join(name);
            let key = if path.exists() {
                read_key(&path)?
            } else {
                let key = generate();
                write_key(&path, &key, name)?;
                generated.push(name);
                key
            };
            keys.push(key);
        }
        let mut keys = keys.into_iter();
        let mut next = || keys.next().expect("one key per file name");
        let token_signing = Ed25519Key::from_private(&next())?;
        let ssh_user_ca = next();
        let ssh_target_ca = next();
        let ssh_host = next();
        let audit = Ed25519Key::from_private(&next())?;
        Ok((
            Self {
                token_signing,
                ssh_user_ca,
                ssh_target_ca,
                ssh_host,
                audit,
            },
            generated,
        ))
    }

    /// Loads every key from `dir` without generating any (read-only tools).
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        for name in FILES {
            if !dir.join(name).exists() {
                bail!(
                    "no key material in {} (missing {name}); start the broker once to generate it",
                    dir.display()
                );
            }
        }
        Ok(Self::load_or_generate(dir)?.0)
    }
}

/// The OpenSSH one-line form of a public key (`ssh-ed25519 AAAA... comment`).
pub fn openssh_public(key: &PrivateKey, comment: &str) -> String {
    let mut public = key.public_key().clone();
    public.set_comment(comment);
    public
        .to_openssh()
        .unwrap_or_else(|_| String::from("<unencodable key>"))
}

/// `SHA256:...` fingerprint, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

impl Ed25519Key {
    fn from_private(key: &PrivateKey) -> anyhow::Result<Self> {
        let pair = key
            .key_data()
            .ed25519()
            .context("expected an ed25519 key")?;
        Ok(Self {
            seed: pair.private.to_bytes(),
            public: pair.public.0,
        })
    }

    pub fn public_bytes(&self) -> [u8; 32] {
        self.public
    }

    /// Short stable identifier: the first 8 bytes of SHA-256(public key), hex.
    pub fn key_id(&self) -> String {
        hex::encode(&Sha256::digest(self.public)[..8])
    }

    pub fn public_b64url(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.public)
    }

    /// PKCS#8 v1 DER of the private key, the form `jsonwebtoken` takes.
    pub fn pkcs8_der(&self) -> Vec<u8> {
        const PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let mut der = PREFIX.to_vec();
        der.extend_from_slice(&self.seed);
        der
    }

    /// A 32-byte key for another purpose, derived with HKDF-SHA256 from
    /// this key's secret (`info` names the purpose).
    pub fn derive(&self, info: &[u8]) -> [u8; 32] {
        struct Len;
        impl ring::hkdf::KeyType for Len {
            fn len(&self) -> usize {
                32
            }
        }
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"pam key derivation");
        let prk = salt.extract(&self.seed);
        let mut out = [0u8; 32];
        prk.expand(&[info], Len)
            .and_then(|okm| okm.fill(&mut out))
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let pair =
            ring::signature::Ed25519KeyPair::from_seed_and_public_key(&self.seed, &self.public)
                .expect("seed and public key were read from one ed25519 key");
        pair.sign(message).as_ref().to_vec()
    }

    pub fn verify(public: &[u8], message: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ed25519Key(id={}, secret=<redacted>)", self.key_id())
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("token_signing", &self.token_signing)
            .field("ssh_user_ca", &fingerprint(self.ssh_user_ca.public_key()))
            .field(
                "ssh_target_ca",
                &fingerprint(self.ssh_target_ca.public_key()),
            )
            .field("ssh_host", &fingerprint(self.ssh_host.public_key()))
            .field("audit", &self.audit)
            .finish()
    }
}

/// A fresh Ed25519 key.
pub fn generate() -> PrivateKey {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    PrivateKey::from(Ed25519Keypair::from_seed(&seed))
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading key {}", path.display()))?;
    PrivateKey::from_openssh(text.as_bytes())
        .with_context(|| format!("key file {} does not parse", path.display()))
}

/// Writes a private key atomically with mode 0600: a crash never leaves a
/// half-written key behind.
fn write_key(path: &Path, key: &PrivateKey, comment: &str) -> anyhow::Result<()> {
    let mut key = key.clone();
    key.set_comment(format!("pam {comment}"));
    let text = key
        .to_openssh(LineEnding::LF)
        .context("encoding a private key")?;
    write_private_file(path, text.as_bytes())
}

/// Writes `bytes` to `path` through a temporary file with mode 0600, fsynced
/// and renamed into place.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// Creates `dir` (and parents) with mode 0700 if missing, and checks that we can write there.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating directory {}", dir.display()))?;
    }
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("directory {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_are_generated_once_with_private_modes_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        let (first, generated) = KeyMaterial::load_or_generate(&keys_dir).unwrap();
        assert_eq!(generated.len(), 5);
        for name in FILES {
            let mode = std::fs::metadata(keys_dir.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let (second, generated) = KeyMaterial::load_or_generate(&keys_dir).unwrap();
        assert!(generated.is_empty());
        assert_eq!(
            first.ssh_user_ca.public_key().key_data(),
            second.ssh_user_ca.public_key().key_data()
        );
        assert_eq!(first.audit.public_bytes(), second.audit.public_bytes());
        assert_ne!(
            first.ssh_user_ca.public_key().key_data(),
            first.ssh_target_ca.public_key().key_data()
        );
    }

    #[test]
    fn a_corrupt_key_is_an_error_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        KeyMaterial::load_or_generate(dir.path()).unwrap();
        std::fs::write(dir.path().join("ssh_user_ca"), "garbage").unwrap();
        let err = KeyMaterial::load_or_generate(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("does not parse"), "{err:#}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ssh_user_ca")).unwrap(),
            "garbage"
        );
    }

    #[test]
    fn signatures_verify_and_debug_hides_secrets() {
        let key = Ed25519Key::from_private(&generate()).unwrap();
        let sig = key.sign(b"checkpoint");
        assert!(Ed25519Key::verify(&key.public_bytes(), b"checkpoint", &sig));
        assert!(!Ed25519Key::verify(
            &key.public_bytes(),
            b"checkpoinT",
            &sig
        ));
        let debug = format!("{key:?}");
        assert!(debug.contains("redacted"));
        assert!(!debug.contains(&hex::encode(key.seed)));
    }
}
