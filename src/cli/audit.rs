//! `pam audit ...`: verify the chain, list events, and a load generator
//! used by the crash-safety test and the benchmarks.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use clap::{Args, Subcommand};

use super::StoreArgs;
use crate::audit::verify;
use crate::domain::audit::{
    AuditEvent, EventFilter, EventKind, Outcome, format_us, parse_time, shown,
};
use crate::keys::KeyMaterial;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the tamper-evident chain; exits non-zero on any break.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Check an exported copy (JSON lines, plain or gzipped; repeatable)
        /// against the chain instead: hashes recompute and match the store,
        /// duplicates are fine, gaps and mismatches are reported.
        #[arg(long, value_name = "FILE.jsonl")]
        against: Vec<std::path::PathBuf>,
        /// A head saved earlier with `pam audit head`: fails unless the
        /// store still holds that event with that hash.
        #[arg(long, value_name = "SEQ:HASH", value_parser = parse_expected)]
        expect: Option<verify::Expected>,
    },
    /// Print the end of the chain as one token `SEQ:HASH`; keep it, and
    /// `pam audit verify --expect SEQ:HASH` later proves nothing before it
    /// was cut.
    Head {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List audit events, newest first.
    Events(EventsArgs),
    /// The login history (successes, failures, lockouts), newest first.
    Logins(EventsArgs),
    /// Brokered sessions, live first.
    Sessions(SessionsArgs),
    /// Full-text search over sessions' output, commands and SQL.
    Search(super::search::SearchArgs),
    /// Replay a recorded session in the terminal.
    Play {
        /// The session id (from `pam audit events` or the web view).
        session: String,
        /// Playback speed (2 = twice as fast).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Cap every pause at this many seconds.
        #[arg(long, default_value_t = 2.0)]
        max_wait: f64,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Append synthetic events as fast as possible, printing each acknowledged id.
    #[command(hide = true)]
    Stress {
        #[command(flatten)]
        store: StoreArgs,
        /// Events to append (0 = until killed).
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        /// Concurrent appenders.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Print `acked SEQ ID` for every acknowledged event.
        #[arg(long)]
        print_acks: bool,
    },
}

#[derive(Debug, Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Only this user's sessions (email).
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    target: Option<String>,
    /// ssh, ecs or postgres.
    #[arg(long)]
    kind: Option<String>,
    /// live or ended.
    #[arg(long)]
    status: Option<String>,
    /// Only sessions started at or after this time.
    #[arg(long)]
    since: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Only events at or after this time (RFC 3339, a date, or an age like `15m`, `7d`).
    #[arg(long)]
    since: Option<String>,
    /// Only events before this time.
    #[arg(long)]
    until: Option<String>,
    /// Only events of this kind (repeatable), e.g. `login.failure`.
    #[arg(long)]
    kind: Vec<String>,
    /// Only events by this actor (user email).
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    target: Option<String>,
    #[arg(long)]
    session: Option<String>,
    /// success, failure or denied.
    #[arg(long)]
    outcome: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: AuditCommand, env: HashMap<String, String>) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify {
            store,
            json,
            against,
            ..
        } if !against.is_empty() => against_command(&store, json, &against, &env).await,
        AuditCommand::Verify {
            store,
            json,
            expect,
            ..
        } => verify_command(&store, json, expect, &env).await,
        AuditCommand::Head { store } => head_command(&store, &env).await,
        AuditCommand::Events(args) => events_command(args, false, &env).await,
        AuditCommand::Logins(args) => events_command(args, true, &env).await,
        AuditCommand::Sessions(args) => sessions_command(args, &env).await,
        AuditCommand::Search(args) => super::search::run(args, &env).await,
        AuditCommand::Play {
            session,
            speed,
            max_wait,
            store,
        } => play_command(&store, &session, speed, max_wait, &env).await,
        AuditCommand::Stress {
            store,
            count,
            concurrency,
            print_acks,
        } => stress_command(&store, count, concurrency, print_acks, &env).await,
    }
}

fn parse_expected(token: &str) -> Result<verify::Expected, String> {
    verify::Expected::parse(token)
        .ok_or_else(|| "expected SEQ:HASH (64 hex digits), as `pam audit head` prints".into())
}

async fn head_command(
    store: &StoreArgs,
    env: &HashMap<String, String>,
) -> anyhow::Result<ExitCode> {
    let token = match source(store, env)? {
        Source::Store(config) => {
            let db = crate::app::open_store(&config).await?;
            let head = crate::store::audit::head(&db)
                .await
                .context("reading the audit trail")?;
            db.close().await;
            verify::Expected {
                seq: head.seq,
                hash: head.hash,
            }
            .to_string()
        }
        Source::Broker(broker) => {
            let head: serde_json::Value = broker.get("/api/v1/audit/head").await?;
            let token = head["head"].as_str().unwrap_or_default().to_owned();
            parse_expected(&token).map_err(anyhow::Error::msg)?;
            token
        }
    };
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

async fn verify_command(
    store: &StoreArgs,
    json: bool,
    expect: Option<verify::Expected>,
    env: &HashMap<String, String>,
) -> anyhow::Result<ExitCode> {
    let config = match source(store, env)? {
        Source::Store(config) => config,
        Source::Broker(broker) => {
            eprintln!(
                "pam: verifying the chain through {} (this walks every event)",
                broker.url
            );
            let path = match &expect {
                Some(expected) => format!("/api/v1/audit/verify?expect={expected}"),
                None => "/api/v1/audit/verify".to_owned(),
            };
            let report: serde_json::Value = broker.get_slow(&path).await?;
            if json {
                println!("{report}");
            } else {
                print_remote_report(&report);
            }
            return Ok(if report["ok"] == true {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
    };
    let keys = KeyMaterial::load(&config.keys_dir())?;
    let db = crate::app::open_store(&config).await?;
    let interactive = !json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let options = verify::Options {
        checkpoint_interval: Some(config.audit.checkpoint_interval.0),
        expect,
        recordings_dir: Some(config.recordings_dir()),
    };
    let report = verify::verify(&db, &keys.audit.public_bytes(), &options, |checked| {
        if interactive {
            eprint!("\rverified {checked} events");
        }
    })
    .await
    .context("reading the audit trail")?;
    if interactive {
        eprintln!();
    }
    let rate = report.events as f64 / report.elapsed.as_secs_f64().max(1e-9);
    if json {
        let out = serde_json::json!({
            "ok": report.ok(),
            "events": report.events,
            "head_seq": report.head_seq,
            "checkpoints_verified": report.checkpoints,
            "last_checkpoint": report.last_checkpoint.as_ref().map(|c| serde_json::json!({
                "seq": c.seq, "time": format_us(c.time_us), "hash": hex::encode(&c.hash),
            })),
            "newest_checkpoint": report.newest_checkpoint.as_ref().map(|(c, age)| serde_json::json!({
                "seq": c.seq, "time": format_us(c.time_us), "age_secs": age.as_secs(),
            })),
            "elapsed_ms": report.elapsed.as_millis() as u64,
            "problems": report.problems.iter().map(|p| serde_json::json!({
                "kind": format!("{:?}", p.kind).to_lowercase(),
                "seq": p.seq,
                "event_id": p.event_id,
                "message": p.message,
            })).collect::<Vec<_>>(),
        });
        println!("{out}");
    } else if report.ok() {
        println!(
            "audit trail OK: {} events, {} signed checkpoints verified{} ({:.0} events/s)",
            report.events,
            report.checkpoints,
            newest_checkpoint(&report),
            rate
        );
    } else {
        println!(
            "audit trail BROKEN: {} problem(s) in {} events",
            report.problems.len(),
            report.events
        );
        for problem in &report.problems {
            println!("  {}", shown(&problem.to_string()));
        }
        println!(" {}", newest_checkpoint(&report).trim_start_matches(';'));
        eprintln!(
            "pam: error: audit trail broken at seq {}: {}",
            report.problems[0].seq,
            shown(&report.problems[0].to_string())
        );
    }
    db.close().await;
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `; newest signed checkpoint at seq N (TIME, 12s old)`, or that there is none.
fn newest_checkpoint(report: &verify::Report) -> String {
    match &report.newest_checkpoint {
        Some((c, age)) => format!(
            "; newest signed checkpoint at seq {} ({}, {} old)",
            c.seq,
            format_us(c.time_us),
            verify::human(*age)
        ),
        None => "; no signed checkpoint yet".to_owned(),
    }
}

/// `pam audit verify --against FILE...`: an exported copy against the store.
async fn against_command(
    store: &StoreArgs,
    json: bool,
    files: &[std::path::PathBuf],
    env: &HashMap<String, String>,
) -> anyhow::Result<ExitCode> {
    let Source::Store(config) = source(store, env)? else {
        anyhow::bail!("--against reads the store: pass --config or --data-dir");
    };
    let db = crate::app::open_store(&config).await?;
    use std::io::Read as _;
    let mut readers = Vec::new();
    for file in files {
        readers.push(
            crate::export::verify::open(file)
                .with_context(|| format!("reading {}", file.display()))?,
        );
    }
    let input = readers.into_iter().fold(
        Box::new(std::io::empty()) as Box<dyn std::io::BufRead>,
        |all, next| Box::new(all.chain(next)),
    );
    let report = crate::export::verify::verify_copy(&db, input)
        .await
        .context("reading the audit trail")?;
    db.close().await;
    if json {
        let out = serde_json::json!({
            "ok": report.ok(),
            "lines": report.lines,
            "events": report.events,
            "duplicates": report.duplicates,
            "truncated": report.truncated,
            "first_seq": report.first_seq,
            "last_seq": report.last_seq,
            "head_seq": report.head_seq,
            "problems": report.problems.iter().map(|p| serde_json::json!({
                "seq": p.seq, "line": p.line, "message": p.message,
            })).collect::<Vec<_>>(),
        });
        println!("{out}");
    } else if report.ok() {
        println!(
            "exported copy OK: {} events (seq {}..={}), {} duplicate line(s), {} truncated; the store's head is at seq {}",
            report.events,
            report.first_seq.unwrap_or(0),
            report.last_seq.unwrap_or(0),
            report.duplicates,
            report.truncated,
            report.head_seq
        );
    } else {
        println!(
            "exported copy BROKEN: {} problem(s) in {} events",
            report.problems.len(),
            report.events
        );
        for problem in &report.problems {
            println!("  {}", shown(&problem.message));
        }
        eprintln!("pam: error: {}", shown(&report.problems[0].message));
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Where `pam audit` reads: the store named by `--config`/`--data-dir`,
/// else the broker the user logged in to (as an auditor), else a dev
/// broker's `./pam-data`.
enum Source {
    Store(Box<crate::config::Config>),
    Broker(super::broker::Broker),
}

fn source(store: &StoreArgs, env: &HashMap<String, String>) -> anyhow::Result<Source> {
    if store.direct() {
        return Ok(Source::Store(Box::new(store.load(env)?)));
    }
    let home = super::home::Home::locate(env)?;
    if home.token().is_some() {
        return Ok(Source::Broker(super::broker::Broker::from_home(
            &home, env,
        )?));
    }
    if std::path::Path::new("./pam-data").is_dir() {
        return Ok(Source::Store(Box::new(store.load(env)?)));
    }
    anyhow::bail!(
        "not logged in: run `pam login` (auditors read through the broker), or pass --config / --data-dir to read a broker's store directly"
    )
}

fn print_remote_report(report: &serde_json::Value) {
    if report["ok"] == true {
        println!(
            "ok: {} events, {} checkpoints, chain intact ({} ms)",
            report["events"], report["checkpoints"], report["elapsed_ms"]
        );
    } else {
        println!("BROKEN: the audit trail was tampered with");
        for p in report["problems"].as_array().into_iter().flatten() {
            println!(
                "  {} at event {}: {}",
                shown(p["kind"].as_str().unwrap_or("?")),
                p["seq"],
                shown(p["message"].as_str().unwrap_or(""))
            );
        }
    }
    let newest = &report["newest_checkpoint"];
    if newest.is_object() {
        println!(
            "newest signed checkpoint at seq {} ({}, {}s old)",
            newest["seq"],
            newest["time"].as_str().unwrap_or("?"),
            newest["age_secs"]
        );
    }
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    q.finish()
}

async fn events_command(
    args: EventsArgs,
    logins: bool,
    env: &HashMap<String, String>,
) -> anyhow::Result<ExitCode> {
    for kind in &args.kind {
        if EventKind::parse(kind).is_none() {
            anyhow::bail!(
                "unknown event kind {kind:?}; known kinds: {}",
                EventKind::ALL.map(EventKind::as_str).join(", ")
            );
        }
    }
    if let Some(outcome) = &args.outcome
        && Outcome::parse(outcome).is_none()
    {
        anyhow::bail!("--outcome must be success, failure or denied");
    }
    let kinds = if logins {
        ["login.success", "login.failure", "login.lockout"]
            .map(String::from)
            .to_vec()
    } else {
        args.kind.clone()
    };
    let events: Vec<serde_json::Value> = match source(&args.store, env)? {
        Source::Store(config) => {
            let db = crate::app::open_store(&config).await?;
            let filter = EventFilter {
                kinds,
                actor: args.user.clone(),
                target: args.target.clone(),
                session_id: args.session.clone(),
                outcome: args.outcome.clone(),
                since_us: args.since.as_deref().map(parse_time).transpose()?,
                until_us: args.until.as_deref().map(parse_time).transpose()?,
                limit: args.limit,
                ..EventFilter::default()
            };
            let events = crate::store::audit::list(&db, &filter).await?;
            db.close().await;
            events.iter().map(|e| e.to_json()).collect()
        }
        Source::Broker(broker) => {
            let path = if logins {
                "/api/v1/audit/logins"
            } else {
                "/api/v1/audit/events"
            };
            let q = query(&[
                ("kind", (!args.kind.is_empty()).then(|| args.kind.join(","))),
                ("user", args.user.clone()),
                ("target", args.target.clone()),
                ("session", args.session.clone()),
                ("outcome", args.outcome.clone()),
                ("since", args.since.clone()),
                ("until", args.until.clone()),
                ("limit", Some(args.limit.clamp(1, 1000).to_string())),
            ]);
            let page: serde_json::Value = broker.get(&format!("{path}?{q}")).await?;
            page["events"].as_array().cloned().unwrap_or_default()
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        for event in &events {
            writeln!(out, "{event}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Every cell is escaped for the terminal: actors, targets and details
    // may carry what an unauthenticated client sent.
    let s = |v: &serde_json::Value| shown(v.as_str().unwrap_or("-")).into_owned();
    if logins {
        writeln!(
            out,
            "{:<27}  {:<28}  {:<7}  {:<15}  {:<12}  {:<10}  REASON",
            "TIME (UTC)", "USER", "OUTCOME", "SOURCE IP", "MFA", "METHOD"
        )?;
        for e in &events {
            let d = &e["details"];
            let amr = d["amr"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            writeln!(
                out,
                "{:<27}  {:<28}  {:<7}  {:<15}  {:<12}  {:<10}  {}",
                s(&e["time"]),
                s(&e["actor"]),
                s(&e["outcome"]),
                s(&e["source_ip"]),
                shown(&amr),
                shown(d["method"].as_str().unwrap_or("-")),
                shown(d["reason"].as_str().unwrap_or(""))
            )?;
        }
    } else {
        writeln!(
            out,
            "{:<27}  {:<22}  {:<7}  {:<28}  {:<16}  {:<15}  DETAILS",
            "TIME (UTC)", "KIND", "OUTCOME", "ACTOR", "TARGET", "SOURCE IP"
        )?;
        for e in &events {
            writeln!(
                out,
                "{:<27}  {:<22}  {:<7}  {:<28}  {:<16}  {:<15}  {}",
                s(&e["time"]),
                s(&e["kind"]),
                s(&e["outcome"]),
                s(&e["actor"]),
                s(&e["target"]),
                s(&e["source_ip"]),
                shown(&e["details"].to_string())
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn sessions_command(
    args: SessionsArgs,
    env: &HashMap<String, String>,
) -> anyhow::Result<ExitCode> {
    let sessions: Vec<crate::domain::session::SessionRecord> = match source(&args.store, env)? {
        Source::Store(config) => {
            let db = crate::app::open_store(&config).await?;
            let filter = crate::domain::session::SessionFilter {
                user: args.user.clone(),
                target: args.target.clone(),
                kind: args.kind.clone(),
                status: args.status.clone(),
                since_us: args.since.as_deref().map(parse_time).transpose()?,
                limit: args.limit,
                ..Default::default()
            };
            let rows = crate::store::sessions::list(&db, &filter).await?;
            db.close().await;
            rows
        }
        Source::Broker(broker) => {
            if args.since.is_some() {
                anyhow::bail!(
                    "--since reads the store directly only (use the web view's filters, or --config)"
                );
            }
            let q = query(&[
                ("user", args.user.clone()),
                ("target", args.target.clone()),
                ("kind", args.kind.clone()),
                ("status", args.status.clone()),
                ("limit", Some(args.limit.to_string())),
            ]);
            broker.get(&format!("/api/v1/sessions?{q}")).await?
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        for s in &sessions {
            writeln!(out, "{}", serde_json::to_string(s)?)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<36}  {:<8}  {:<28}  {:<18}  {:<27}  {:<8}  {:>10}  END",
        "SESSION", "KIND", "USER", "TARGET", "STARTED (UTC)", "STATUS", "DURATION"
    )?;
    let now = crate::domain::audit::now_us();
    for s in &sessions {
        let secs = (s.ended_at.unwrap_or(now) - s.started_at) / 1_000_000;
        writeln!(
            out,
            "{:<36}  {:<8}  {:<28}  {:<18}  {:<27}  {:<8}  {:>10}  {}",
            shown(&s.id),
            shown(s.kind.as_str()),
            shown(&s.user_email),
            shown(&s.target),
            format_us(s.started_at),
            shown(&s.status),
            format!("{}:{:02}:{:02}", secs / 3600, (secs % 3600) / 60, secs % 60),
            shown(s.end_reason.as_deref().unwrap_or(""))
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn stress_command(
    store: &StoreArgs,
    count: u64,
    concurrency: usize,
    print_acks: bool,
    env: &HashMap<String, String>,
) -> anyhow::Result<ExitCode> {
    let config = store.load(env)?;
    let keys = KeyMaterial::load(&config.keys_dir())?;
    let db = crate::app::open_store(&config).await?;
    let (audit, writer) = crate::app::audit_handle_for_tools(db.clone(), &keys, &config);
    let writer = tokio::spawn(writer.run());
    let issued = Arc::new(AtomicU64::new(0));
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency.max(1) {
        let audit = audit.clone();
        let issued = issued.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if count > 0 && n >= count {
                    return Ok::<(), anyhow::Error>(());
                }
                let event = AuditEvent::new(EventKind::AdminChange, Outcome::Success)
                    .actor("stress@pam")
                    .target(format!("worker-{worker}"))
                    .details(serde_json::json!({ "n": n, "what": "synthetic load" }));
                let id = event.id;
                let seq = audit.record(event).await?;
                if print_acks {
                    println!("acked {seq} {id}");
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    audit.close().await;
    writer.await?;
    let elapsed = started.elapsed();
    let done = count.max(1);
    eprintln!(
        "appended {done} events in {:.3}s: {:.0} events/s",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64()
    );
    db.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn play_command(
    store: &StoreArgs,
    session: &str,
    speed: f64,
    max_wait: f64,
    env: &HashMap<String, String>,
) -> anyhow::Result<ExitCode> {
    if !crate::audit::recording::valid_session_id(session) {
        anyhow::bail!("{session:?} is not a session id");
    }
    // The SHA-256 to check comes from the chained session.end, never from
    // the sessions row (which the database's owner can rewrite unseen).
    let (record, text, sealed) = match source(store, env)? {
        Source::Store(config) => {
            let db = crate::app::open_store(&config).await?;
            let record = crate::store::sessions::get(&db, session).await?;
            let sealed = verify::sealed_recording(&db, session).await?;
            db.close().await;
            let record = record.with_context(|| format!("no session {session}"))?;
            let relative = record.recording.clone().with_context(|| {
                format!(
                    "session {session} has no terminal recording (kind {})",
                    record.kind
                )
            })?;
            let path = config.recordings_dir().join(&relative);
            let text = tokio::fs::read_to_string(&path)
                .await
                .with_context(|| format!("reading {}", path.display()))?;
            (record, text, sealed)
        }
        Source::Broker(broker) => {
            let record: crate::domain::session::SessionRecord =
                broker.get(&format!("/api/v1/sessions/{session}")).await?;
            let bytes = broker
                .get_bytes(&format!("/api/v1/sessions/{session}/recording"))
                .await?;
            let ends: serde_json::Value = broker
                .get(&format!(
                    "/api/v1/audit/events?kind=session.end&session={session}&limit=1000"
                ))
                .await?;
            let sealed = ends["events"]
                .as_array()
                .and_then(|events| events.last())
                .and_then(|end| {
                    Some(verify::Sealed {
                        recording: end["details"]["recording"].as_str()?.to_owned(),
                        sha256: end["details"]["recording_sha256"].as_str()?.to_owned(),
                    })
                });
            (record, String::from_utf8_lossy(&bytes).into_owned(), sealed)
        }
    };
    match &sealed {
        Some(sealed) => {
            use sha2::Digest;
            let actual = hex::encode(sha2::Sha256::digest(text.as_bytes()));
            if actual != sealed.sha256 {
                eprintln!(
                    "pam: warning: the recording does not match the SHA-256 in session.end ({}); it was changed",
                    sealed.sha256
                );
            }
        }
        None if record.ended_at.is_some() => eprintln!(
            "pam: warning: the chain holds no SHA-256 for this recording (no session.end with one); it cannot be checked"
        ),
        None => {}
    }
    let speed = if speed > 0.0 { speed } else { 1.0 };
    let stdout = std::io::stdout();
    let mut last = 0.0f64;
    for line in text.lines().skip(1) {
        // The bytes the client received, those that are not UTF-8 included.
        let Some((time, kind, data)) = crate::audit::asciicast::read_event(line) else {
            continue;
        };
        let wait = ((time - last) / speed).clamp(0.0, max_wait);
        last = time;
        if wait > 0.0 {
            tokio::time::sleep(std::time::Duration::from_secs_f64(wait)).await;
        }
        if kind == "o" {
            let mut out = stdout.lock();
            out.write_all(&data)?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
