//! Walks the chain and names the first event that was changed, deleted,
//! inserted or reordered, and any checkpoint that no longer matches.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::audit::chain;
use crate::domain::audit::{Checkpoint, EventFilter, EventKind, EventRecord};
use crate::store::{self, Db};

/// Events read per query.
const PAGE: u32 = 20_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// The event's content no longer matches its hash.
    Changed,
    /// Events are missing from the chain.
    Deleted,
    /// An event that was never appended sits in the chain.
    Inserted,
    /// Events are in a different order than they were appended.
    Reordered,
    /// A checkpoint's signature is invalid or its hash does not match the chain.
    Checkpoint,
    /// The head (end of chain) disagrees with the events.
    Truncated,
    /// A head an auditor saved (`--expect SEQ:HASH`) is no longer in the
    /// store: the trail was cut or rewritten after it.
    Expected,
    /// Events newer than the newest checkpoint are older than twice
    /// `audit.checkpoint_interval`: a live broker would have sealed them.
    Unsealed,
    /// A recording no longer has the SHA-256 its chained `session.end`
    /// holds.
    Recording,
}

/// What a verification checks besides the chain itself.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `audit.checkpoint_interval`: events left unsealed for twice as long
    /// are a problem. `None`: not checked.
    pub checkpoint_interval: Option<Duration>,
    /// A head saved earlier (`pam audit head`) that must still be there.
    pub expect: Option<Expected>,
    /// Where recordings live: each one is checked against the SHA-256 of
    /// its session's chained `session.end`. `None`: not checked.
    pub recordings_dir: Option<std::path::PathBuf>,
}

/// A point of the chain as `pam audit head` prints it: `SEQ:HASH` (hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub seq: i64,
    pub hash: Vec<u8>,
}

impl Expected {
    pub fn parse(token: &str) -> Option<Self> {
        let (seq, hash) = token.trim().split_once(':')?;
        let seq = seq.parse::<i64>().ok().filter(|s| *s >= 0)?;
        let hash = hex::decode(hash).ok().filter(|h| h.len() == 32)?;
        Some(Self { seq, hash })
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, hex::encode(&self.hash))
    }
}

#[derive(Debug, Clone)]
pub struct Problem {
    pub kind: ProblemKind,
    pub seq: i64,
    pub event_id: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub events: i64,
    pub checkpoints: usize,
    pub last_checkpoint: Option<Checkpoint>,
    pub head_seq: i64,
    /// The newest checkpoint in the store once the walk was over, if it
    /// verifies, and its age then.
    pub newest_checkpoint: Option<(Checkpoint, Duration)>,
    /// Recordings hashed and found as sealed, and those not on this host.
    pub recordings_checked: u64,
    pub recordings_missing: u64,
    pub problems: Vec<Problem>,
    pub elapsed: Duration,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Verifies the whole trail. `public_key` is the audit checkpoint key;
/// `progress` is called after each page with the number of events checked.
pub async fn verify(
    db: &Db,
    public_key: &[u8],
    options: &Options,
    progress: impl FnMut(i64),
) -> Result<Report, store::Error> {
    let started = Instant::now();
    let checkpoints = store::audit::checkpoints(db).await?;
    let mut walk = Walk::new(public_key, &checkpoints);
    let head = walk.run(db, progress).await?;
    let Walk {
        mut problems,
        expected_seq,
        expected_prev,
        checked,
        valid_checkpoints,
        last_checkpoint,
        ..
    } = walk;
    let last_seq = expected_seq - 1;
    head_problems(&head, last_seq, &expected_prev, &checkpoints, &mut problems);
    if let Some(expected) = &options.expect {
        problems.extend(expected_head_problem(db, expected, last_seq).await?);
    }
    let newest_checkpoint = newest_checkpoint(db, public_key).await?;
    if let Some(interval) = options.checkpoint_interval {
        problems.extend(unsealed_problem(db, interval, &newest_checkpoint).await?);
    }
    let (mut recordings_checked, mut recordings_missing) = (0, 0);
    if let Some(dir) = &options.recordings_dir {
        (recordings_checked, recordings_missing) = check_recordings(db, dir, &mut problems).await?;
    }
    problems.sort_by_key(|p| p.seq);
    Ok(Report {
        events: checked,
        checkpoints: valid_checkpoints,
        last_checkpoint,
        head_seq: head.seq,
        newest_checkpoint,
        recordings_checked,
        recordings_missing,
        problems,
        elapsed: started.elapsed(),
    })
}

/// The walk along the chain: where it is, and what it found.
struct Walk<'a> {
    /// Checkpoints with a valid signature, by the seq they pin.
    by_seq: HashMap<i64, &'a Checkpoint>,
    problems: Vec<Problem>,
    expected_seq: i64,
    expected_prev: Vec<u8>,
    checked: i64,
    valid_checkpoints: usize,
    last_checkpoint: Option<Checkpoint>,
}

impl<'a> Walk<'a> {
    /// Checks the checkpoints' signatures first.
    fn new(public_key: &[u8], checkpoints: &'a [Checkpoint]) -> Self {
        let mut by_seq: HashMap<i64, &Checkpoint> = HashMap::new();
        let mut problems = Vec::new();
        for checkpoint in checkpoints {
            if chain::checkpoint_valid(public_key, checkpoint) {
                by_seq.insert(checkpoint.seq, checkpoint);
            } else {
                problems.push(Problem {
                    kind: ProblemKind::Checkpoint,
                    seq: checkpoint.seq,
                    event_id: None,
                    message: format!(
                        "checkpoint at seq {} has an invalid signature (forged, or signed by another key than {})",
                        checkpoint.seq,
                        hex::encode(&public_key[..8.min(public_key.len())])
                    ),
                });
            }
        }

        Walk {
            by_seq,
            problems,
            expected_seq: 1,
            expected_prev: chain::GENESIS.to_vec(),
            checked: 0,
            valid_checkpoints: 0,
            last_checkpoint: None,
        }
    }

    /// Every page from seq 1. A live broker keeps appending while we walk:
    /// the head is read after the walk, and events appended meanwhile are
    /// walked too (a few rounds). Returns the head.
    async fn run(
        &mut self,
        db: &Db,
        mut progress: impl FnMut(i64),
    ) -> Result<store::audit::Head, store::Error> {
        let mut rounds = 0;
        loop {
            // The next page is read while this one is hashed.
            let mut next = Some(tokio::spawn({
                let db = db.clone();
                let from = self.expected_seq;
                async move { store::audit::range(&db, from, PAGE).await }
            }));
            while let Some(task) = next.take() {
                let page = task.await.map_err(|source| store::Error::Task {
                    task: "reader",
                    source,
                })??;
                if page.is_empty() {
                    break;
                }
                if page.len() == PAGE as usize {
                    let from = page[page.len() - 1].seq + 1;
                    let db = db.clone();
                    next = Some(tokio::spawn(async move {
                        store::audit::range(&db, from, PAGE).await
                    }));
                }
                // Hashing is CPU work: off the async runtime.
                let (page, hashes) = tokio::task::spawn_blocking(move || {
                    let hashes = hash_page(&page);
                    (page, hashes)
                })
                .await
                .map_err(|source| store::Error::Task {
                    task: "hashing",
                    source,
                })?;
                self.page(&page, &hashes);
                progress(self.checked);
            }
            let head = store::audit::head(db).await?;
            rounds += 1;
            if head.seq < self.expected_seq || rounds >= 5 {
                return Ok(head);
            }
        }
    }

    /// Checks one page's links, contents and checkpoints.
    fn page(&mut self, page: &[EventRecord], hashes: &[[u8; 32]]) {
        // Hashes of this page, built on the first broken link only.
        let mut index: Option<HashMap<&[u8], usize>> = None;
        let mut last_problem: Option<usize> = None;
        for (i, record) in page.iter().enumerate() {
            let content_ok = hashes[i].as_slice() == record.hash.as_slice();
            let mut link_checked = false;
            if record.seq != self.expected_seq {
                self.problems.push(Problem {
            kind: ProblemKind::Deleted,
            seq: self.expected_seq,
            event_id: Some(record.id.clone()),
            message: format!(
                "events at seq {}..={} were deleted (the chain jumps to event {} at seq {})",
                self.expected_seq,
                record.seq - 1,
                record.id,
                record.seq
            ),
        });
                last_problem = Some(i);
                link_checked = true;
            }
            if !link_checked && record.prev_hash != self.expected_prev {
                let index = index.get_or_insert_with(|| {
                    page.iter()
                        .enumerate()
                        .map(|(k, r)| (r.hash.as_slice(), k))
                        .collect()
                });
                let displaced = index.contains_key(record.prev_hash.as_slice());
                let explained = last_problem.is_some_and(|p| i - p <= 2);
                if !(displaced && explained) {
                    self.problems
                        .push(classify_link(page, i, &self.expected_prev, displaced));
                    last_problem = Some(i);
                }
            } else if !link_checked && !content_ok {
                // The next event chaining onto this one's predecessor means
                // this one was slipped in between them.
                let inserted = page
                    .get(i + 1)
                    .is_some_and(|next| next.prev_hash == record.prev_hash);
                self.problems.push(Problem {
            kind: if inserted { ProblemKind::Inserted } else { ProblemKind::Changed },
            seq: record.seq,
            event_id: Some(record.id.clone()),
            message: if inserted {
                format!(
                    "event {} at seq {} was inserted (it is not part of the chain)",
                    record.id, record.seq
                )
            } else {
                format!(
                    "event {} at seq {} was changed (its content no longer matches its hash)",
                    record.id, record.seq
                )
            },
        });
                last_problem = Some(i);
            }
            if let Some(checkpoint) = self.by_seq.get(&record.seq) {
                // A checkpoint pins the hash the chain had when it was signed:
                // a rewritten chain (all hashes recomputed) fails here.
                if checkpoint.hash != record.hash || !content_ok {
                    self.problems.push(Problem {
                kind: ProblemKind::Checkpoint,
                seq: record.seq,
                event_id: Some(record.id.clone()),
                message: format!(
                    "signed checkpoint at seq {} does not match the chain: events up to {} were rewritten",
                    record.seq, record.id
                ),
            });
                } else {
                    self.valid_checkpoints += 1;
                    self.last_checkpoint = Some((*checkpoint).clone());
                }
            }
            self.expected_prev.clone_from(&record.hash);
            self.expected_seq = record.seq + 1;
            self.checked += 1;
        }
    }
}

/// The chain's end against its head and the checkpoints: deleted or added
/// events after the last one walked.
fn head_problems(
    head: &store::audit::Head,
    last_seq: i64,
    expected_prev: &[u8],
    checkpoints: &[Checkpoint],
    problems: &mut Vec<Problem>,
) {
    if head.seq > last_seq {
        problems.push(Problem {
            kind: ProblemKind::Truncated,
            seq: last_seq + 1,
            event_id: None,
            message: format!(
                "events after seq {last_seq} were deleted (the chain's head is at seq {})",
                head.seq
            ),
        });
    } else if head.seq < last_seq || (last_seq > 0 && head.hash != expected_prev) {
        problems.push(Problem {
            kind: ProblemKind::Inserted,
            seq: head.seq + 1,
            event_id: None,
            message: format!(
                "events after the chain's head (seq {}) were added outside the broker",
                head.seq
            ),
        });
    }
    for checkpoint in checkpoints {
        if checkpoint.seq > last_seq {
            problems.push(Problem {
                kind: ProblemKind::Truncated,
                seq: checkpoint.seq,
                event_id: None,
                message: format!(
                    "a signed checkpoint covers seq {} but the chain ends at seq {last_seq}: events were deleted",
                    checkpoint.seq
                ),
            });
        }
    }
}

/// `--expect SEQ:HASH`: the head a previous run saw must still be there.
async fn expected_head_problem(
    db: &Db,
    expected: &Expected,
    last_seq: i64,
) -> Result<Option<Problem>, store::Error> {
    let found = store::audit::range(db, expected.seq, 1).await?;
    let genesis = expected.seq == 0 && expected.hash == chain::GENESIS;
    let held = genesis
        || found
            .first()
            .is_some_and(|e| e.seq == expected.seq && e.hash == expected.hash);
    if held {
        return Ok(None);
    }
    Ok(Some(Problem {
        kind: ProblemKind::Expected,
        seq: expected.seq,
        event_id: found
            .first()
            .filter(|e| e.seq == expected.seq)
            .map(|e| e.id.clone()),
        message: match found.first().filter(|e| e.seq == expected.seq) {
            Some(_) => format!(
                "the expected head {expected} was rewritten: the event at seq {} has another hash now",
                expected.seq
            ),
            None => format!(
                "the expected head {expected} is no longer in the store: the trail was cut (it ends at seq {last_seq})"
            ),
        },
    }))
}

/// Events older than twice the checkpoint interval that no checkpoint seals.
async fn unsealed_problem(
    db: &Db,
    interval: Duration,
    newest_checkpoint: &Option<(Checkpoint, Duration)>,
) -> Result<Option<Problem>, store::Error> {
    let sealed = newest_checkpoint.as_ref().map_or(0, |(c, _)| c.seq);
    let oldest_unsealed = store::audit::range(db, sealed + 1, 1).await?;
    let limit = interval.saturating_mul(2);
    let Some(event) = oldest_unsealed.first() else {
        return Ok(None);
    };
    let age = age_of(event.time_us);
    if age <= limit {
        return Ok(None);
    }
    let newest = match newest_checkpoint {
        Some((c, age)) => format!(
            "the newest checkpoint (seq {}) is {} old",
            c.seq,
            human(*age)
        ),
        None => "there is no valid checkpoint".to_owned(),
    };
    Ok(Some(Problem {
        kind: ProblemKind::Unsealed,
        seq: event.seq,
        event_id: Some(event.id.clone()),
        message: format!(
            "events from seq {} on are {} old and no checkpoint seals them ({newest}; a live broker checkpoints every {}): checkpoints were deleted or the broker stopped signing",
            event.seq,
            human(age),
            human(interval)
        ),
    }))
}

/// Every sealed recording under `dir` against the SHA-256 its `session.end`
/// holds: (matching, missing).
async fn check_recordings(
    db: &Db,
    dir: &std::path::Path,
    problems: &mut Vec<Problem>,
) -> Result<(u64, u64), store::Error> {
    let (mut recordings_checked, mut recordings_missing) = (0, 0);
    let mut after = 0;
    loop {
        let filter = EventFilter {
            kinds: vec![EventKind::SessionEnd.as_str().to_owned()],
            after_seq: Some(after),
            ascending: true,
            limit: 1000,
            ..EventFilter::default()
        };
        let page = store::audit::list(db, &filter).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for event in &page {
            let Some(sealed) = Sealed::of(event) else {
                continue;
            };
            let Some(path) = sealed.path(dir) else {
                continue;
            };
            match file_sha256(path).await {
                None => recordings_missing += 1,
                Some(actual) if actual == sealed.sha256 => recordings_checked += 1,
                Some(_) => problems.push(Problem {
                    kind: ProblemKind::Recording,
                    seq: event.seq,
                    event_id: Some(event.id.clone()),
                    message: format!(
                        "the recording of session {} ({}) no longer has the SHA-256 its session.end (seq {}) holds: it was changed",
                        event.session_id.as_deref().unwrap_or("?"),
                        sealed.recording,
                        event.seq
                    ),
                }),
            }
        }
    }
    Ok((recordings_checked, recordings_missing))
}

/// A recording as the chained `session.end` of its session describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Relative to the recordings directory.
    pub recording: String,
    pub sha256: String,
}

impl Sealed {
    pub fn of(event: &EventRecord) -> Option<Self> {
        let details: serde_json::Value = serde_json::from_str(&event.details).ok()?;
        Some(Self {
            recording: details["recording"].as_str()?.to_owned(),
            sha256: details["recording_sha256"].as_str()?.to_owned(),
        })
    }

    /// The file under `dir`, when the recorded path stays inside it.
    pub fn path(&self, dir: &std::path::Path) -> Option<std::path::PathBuf> {
        let relative = std::path::Path::new(&self.recording);
        relative
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
            .then(|| dir.join(relative))
    }
}

/// What the chain says about `session_id`'s recording: from its oldest
/// `session.end` (the chain is what an insider cannot rewrite unseen, unlike
/// the `sessions` row). `None` while the session has not ended, or when it
/// had no recording.
pub async fn sealed_recording(db: &Db, session_id: &str) -> Result<Option<Sealed>, store::Error> {
    let filter = EventFilter {
        kinds: vec![EventKind::SessionEnd.as_str().to_owned()],
        session_id: Some(session_id.to_owned()),
        ascending: true,
        limit: 1,
        ..EventFilter::default()
    };
    Ok(store::audit::list(db, &filter)
        .await?
        .first()
        .and_then(Sealed::of))
}

/// The hex SHA-256 of a file, `None` when it cannot be read.
pub async fn file_sha256(path: std::path::PathBuf) -> Option<String> {
    tokio::task::spawn_blocking(move || {
        use sha2::Digest;
        use std::io::Read;
        let mut file = std::fs::File::open(path).ok()?;
        let mut hasher = sha2::Sha256::new();
        let mut buffer = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buffer).ok()?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
        Some(hex::encode(hasher.finalize()))
    })
    .await
    .ok()
    .flatten()
}

/// The newest checkpoint in the store whose signature holds and whose
/// event is still there with that hash, and its age. Read after the walk,
/// so that a long walk of a live trail sees the broker's latest one.
async fn newest_checkpoint(
    db: &Db,
    public_key: &[u8],
) -> Result<Option<(Checkpoint, Duration)>, store::Error> {
    let mut all = store::audit::checkpoints(db).await?;
    while let Some(checkpoint) = all.pop() {
        if !chain::checkpoint_valid(public_key, &checkpoint) {
            continue;
        }
        let sealed = store::audit::range(db, checkpoint.seq, 1).await?;
        if sealed
            .first()
            .is_some_and(|e| e.seq == checkpoint.seq && e.hash == checkpoint.hash)
        {
            let age = age_of(checkpoint.time_us);
            return Ok(Some((checkpoint, age)));
        }
    }
    Ok(None)
}

fn age_of(time_us: i64) -> Duration {
    let now = crate::domain::audit::now_us();
    Duration::from_micros(u64::try_from(now.saturating_sub(time_us)).unwrap_or(0))
}

/// `1h 2m 3s`, `4m 5s`, `6s`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, m, s) => format!("{h}h {m}m {s}s"),
    }
}

/// Hashes a page on all cores: each event's hash depends only on its own
/// row (it stores its predecessor's hash), so the work splits freely.
fn hash_page(page: &[EventRecord]) -> Vec<[u8; 32]> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    if threads <= 1 || page.len() < 4096 {
        return page.iter().map(chain::hash).collect();
    }
    let chunk = page.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = page
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(chain::hash).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// The event at `page[i]` does not chain onto its predecessor. Look at its
/// neighbours to tell a reordering from an insertion or a deletion.
/// `displaced`: its predecessor is elsewhere in the page.
fn classify_link(page: &[EventRecord], i: usize, expected_prev: &[u8], displaced: bool) -> Problem {
    let record = &page[i];
    let successor = page[i + 1..]
        .iter()
        .position(|r| r.prev_hash == expected_prev)
        .map(|offset| i + 1 + offset);
    if displaced {
        let partner = successor.map(|j| &page[j]).unwrap_or(record);
        return Problem {
            kind: ProblemKind::Reordered,
            seq: record.seq,
            event_id: Some(record.id.clone()),
            message: format!(
                "event {} at seq {} is out of order (reordered): the event appended at this place is {} at seq {}",
                record.id, record.seq, partner.id, partner.seq
            ),
        };
    }
    match successor {
        Some(j) if j == i + 1 => Problem {
            kind: ProblemKind::Inserted,
            seq: record.seq,
            event_id: Some(record.id.clone()),
            message: format!(
                "event {} at seq {} was inserted (it is not part of the chain)",
                record.id, record.seq
            ),
        },
        Some(j) => Problem {
            kind: ProblemKind::Inserted,
            seq: record.seq,
            event_id: Some(record.id.clone()),
            message: format!(
                "events at seq {}..={} were inserted (the chain continues at seq {})",
                record.seq,
                page[j].seq - 1,
                page[j].seq
            ),
        },
        None => Problem {
            kind: ProblemKind::Deleted,
            seq: record.seq,
            event_id: Some(record.id.clone()),
            message: format!(
                "the event before {} at seq {} is missing (deleted and renumbered) or was changed",
                record.id, record.seq
            ),
        },
    }
}
