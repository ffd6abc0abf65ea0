//! The user's client state in `~/.pam` (or `$PAM_HOME`): the broker URL,
//! the broker token, the SSH key and its certificate, a known_hosts line.
//! Secret files are written 0600 through a rename, never half-written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use russh::keys::ssh_key::{Certificate, LineEnding, PrivateKey};
use serde::{Deserialize, Serialize};

use crate::api::LoginResponse;
use crate::keys::write_private_file;

pub struct Home {
    pub dir: PathBuf,
}

/// What `pam login` remembers besides the secrets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Saved {
    pub broker: Option<String>,
    pub user: Option<String>,
    pub groups: Vec<String>,
    pub mfa: bool,
    pub method: Option<String>,
    pub session_id: Option<String>,
    pub expires_at: Option<String>,
    pub ssh_addr: Option<String>,
    pub postgres_addr: Option<String>,
}

impl Home {
    pub fn locate(env: &HashMap<String, String>) -> anyhow::Result<Self> {
        let dir = match env.get("PAM_HOME").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => {
                let home = env
                    .get("HOME")
                    .filter(|v| !v.is_empty())
                    .context("neither PAM_HOME nor HOME is set")?;
                Path::new(home).join(".pam")
            }
        };
        Ok(Self { dir })
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("id_ed25519-cert.pub")
    }

    pub fn known_hosts_path(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    fn token_path(&self) -> PathBuf {
        self.dir.join("token")
    }

    fn saved_path(&self) -> PathBuf {
        self.dir.join("session.json")
    }

    pub fn saved(&self) -> Saved {
        std::fs::read(self.saved_path())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    pub fn token(&self) -> Option<String> {
        std::fs::read_to_string(self.token_path())
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
    }

    pub fn certificate(&self) -> Option<Certificate> {
        let text = std::fs::read_to_string(self.cert_path()).ok()?;
        Certificate::from_openssh(text.trim()).ok()
    }

    /// Remembers a broker URL before the first login succeeds.
    pub fn save_broker(&self, broker: &str) -> anyhow::Result<()> {
        crate::keys::create_private_dir(&self.dir)?;
        let mut saved = self.saved();
        saved.broker = Some(broker.to_owned());
        self.write_saved(&saved)
    }

    /// Stores everything a login returned, with the key it certified.
    pub fn save_login(
        &self,
        broker: &str,
        key: &PrivateKey,
        login: &LoginResponse,
    ) -> anyhow::Result<()> {
        crate::keys::create_private_dir(&self.dir)?;
        let mut key = key.clone();
        key.set_comment(format!("pam {}", login.user));
        let private = key
            .to_openssh(LineEnding::LF)
            .context("encoding the SSH key")?;
        write_private_file(&self.key_path(), private.as_bytes())?;
        let public = key
            .public_key()
            .to_openssh()
            .context("encoding the SSH key")?;
        write_private_file(
            &self.dir.join("id_ed25519.pub"),
            format!("{public}\n").as_bytes(),
        )?;
        write_private_file(
            &self.cert_path(),
            format!("{}\n", login.certificate.trim()).as_bytes(),
        )?;
        // The broker's host key under its address and under the alias every
        // `*.pam` host of `pam config ssh` uses.
        let key = login
            .known_hosts
            .split_once(' ')
            .map(|(_, k)| k)
            .unwrap_or("");
        let known = format!("{}\n{} {key}\n", login.known_hosts, super::ssh::HOST_ALIAS);
        write_private_file(&self.known_hosts_path(), known.as_bytes())?;
        write_private_file(&self.token_path(), login.token.as_bytes())?;
        self.write_saved(&Saved {
            broker: Some(broker.to_owned()),
            user: Some(login.user.clone()),
            groups: login.groups.clone(),
            mfa: login.mfa,
            method: Some(login.method.clone()),
            session_id: Some(login.session_id.clone()),
            expires_at: Some(login.expires_at.clone()),
            ssh_addr: Some(login.ssh_addr.clone()),
            postgres_addr: Some(login.postgres_addr.clone()),
        })
    }

    /// Forgets the session and its key; keeps the broker URL.
    pub fn clear_login(&self) -> anyhow::Result<()> {
        for path in [
            self.token_path(),
            self.key_path(),
            self.dir.join("id_ed25519.pub"),
            self.cert_path(),
        ] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
        }
        let saved = self.saved();
        self.write_saved(&Saved {
            broker: saved.broker,
            ..Saved::default()
        })
    }

    fn write_saved(&self, saved: &Saved) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(saved)?;
        write_private_file(&self.saved_path(), &bytes)
    }
}
