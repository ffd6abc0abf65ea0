//! `pam admin ...`: offline administration against the broker's store and
//! keys (run where the broker's config is).

use std::collections::HashMap;
use std::process::ExitCode;

use clap::Subcommand;
use secrecy::ExposeSecret;

use super::StoreArgs;
use crate::keys::KeyMaterial;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Local emergency accounts for when the IdP is down.
    Breakglass {
        #[command(subcommand)]
        command: BreakglassCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum BreakglassCommand {
    /// Create (or reset) an account; prints its password and TOTP secret once.
    Add {
        /// Account name (lowercase letters, digits, '-', '_').
        user: String,
        /// Groups the account logs in with (policy decides what they allow).
        #[arg(long, value_delimiter = ',', default_value = "pam-admins,breakglass")]
        groups: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub async fn run(command: AdminCommand, env: HashMap<String, String>) -> anyhow::Result<ExitCode> {
    match command {
        AdminCommand::Breakglass {
            command:
                BreakglassCommand::Add {
                    user,
                    groups,
                    store,
                },
        } => {
            let config = store.load(&env)?;
            let keys = KeyMaterial::load(&config.keys_dir())?;
            let db = crate::app::open_store(&config).await?;
            db.migrate().await?;
            let (audit, writer) = crate::app::audit_handle_for_tools(db.clone(), &keys, &config);
            let writer = tokio::spawn(writer.run());
            let by = format!(
                "{}@{} (pam admin)",
                env.get("USER").map(String::as_str).unwrap_or("operator"),
                config.node_name()
            );
            let result = crate::identity::add_breakglass(
                &db,
                &audit,
                &crate::identity::breakglass_key(&keys),
                &user,
                groups,
                &by,
            )
            .await;
            audit.close().await;
            let _ = writer.await;
            db.close().await;
            let enrolment = result?;
            println!(
                "break-glass account {user} created. Store these now; they are not shown again."
            );
            println!("  password:    {}", enrolment.password.expose_secret());
            println!(
                "  TOTP secret: {}",
                enrolment.totp_secret_base32.expose_secret()
            );
            println!("  TOTP URI:    {}", enrolment.otpauth_url.expose_secret());
            println!("log in with:   pam login --break-glass {user}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
