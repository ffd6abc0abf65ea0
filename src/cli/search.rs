//! `pam audit search TEXT`: full-text search over sessions' output,
//! commands and SQL, through the broker as the logged-in user (the broker
//! checks `view_audit` and records the search). Each hit names the moment
//! to replay: `pam audit play SESSION`, or the web view's link.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;

use clap::Args;

use crate::domain::audit::{format_us, shown};
use crate::domain::search::Hit;

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// The words to find (literal text: no operators, quotes or patterns).
    pub text: String,
    /// Hits at most (newest first; 1 to 200).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Deserialize)]
struct Page {
    hits: Vec<Hit>,
}

pub async fn run(args: SearchArgs, env: &HashMap<String, String>) -> anyhow::Result<ExitCode> {
    let home = super::home::Home::locate(env)?;
    let broker = super::broker::Broker::from_home(&home, env)?;
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("q", &args.text);
    q.append_pair("limit", &args.limit.to_string());
    let page: Page = broker
        .get(&format!("/api/v1/audit/search?{}", q.finish()))
        .await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        for hit in &page.hits {
            writeln!(out, "{}", serde_json::to_string(hit)?)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<36}  {:<8}  {:<24}  {:<16}  {:<27}  {:>9}  {:<7}  TEXT",
        "SESSION", "KIND", "USER", "TARGET", "STARTED (UTC)", "AT", "SOURCE"
    )?;
    for hit in &page.hits {
        writeln!(
            out,
            "{:<36}  {:<8}  {:<24}  {:<16}  {:<27}  {:>9}  {:<7}  {}",
            shown(&hit.session_id),
            shown(&hit.kind),
            shown(&hit.user),
            shown(&hit.target),
            format_us(hit.started_at),
            format!("{:.1}s", hit.offset),
            shown(&hit.source),
            shown(&hit.snippet),
        )?;
    }
    if page.hits.is_empty() {
        eprintln!("no session showed or ran these words");
    }
    Ok(ExitCode::SUCCESS)
}
