//! Identity against a real OIDC provider (npm `oidc-provider`): browser and
//! device logins, the real `pam login` binary, groups, MFA, forged tokens,
//! replays, revocation, proof of possession, lockout, break-glass. Every
//! attempt must land in the login history.

mod attacks;
mod breakglass;
mod browser;
mod cli;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use pam::web::browser::PRE_LOGIN_COOKIE;

use crate::support::peers::{browse, browse_for_cookie, peers_dir};
use crate::support::{LoginFailure, Options, TestApp, free_port, pam_command};

async fn app_with_idp(extra: &str) -> TestApp {
    TestApp::spawn_with(Options {
        idp: true,
        toml: extra.to_owned(),
        ..Options::default()
    })
    .await
}

fn reason_of(details: &serde_json::Value) -> String {
    details["reason"].as_str().unwrap_or_default().to_owned()
}
