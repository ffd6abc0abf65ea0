//! The CloudWatch Logs sink: events as log events of one stream, in `seq`
//! order, cut into `PutLogEvents` calls within the API's limits.
//!
//! Limits per call: 10,000 events; 1,048,576 bytes counting each message's
//! UTF-8 bytes plus 26; chronological timestamps spanning at most 24 hours;
//! nothing older than 14 days or beyond the group's retention. Timestamps are
//! the events' own times (milliseconds), never moving backwards within the
//! stream (so `seq` order is kept) and never older than 14 days less an hour
//! (a sink catching up on an old trail); the message keeps the exact time.
//! A message larger than one event may be (256 KiB) is replaced by a stub
//! naming its `seq`, `hash` and `prev_hash`, marked `"truncated": true`.

use super::{Delivery, Line};
use crate::aws::Aws;
use crate::aws::logs::{self, LogEvent, Put};

pub const MAX_EVENTS: usize = 10_000;
pub const MAX_BYTES: usize = 1_048_576;
pub const EVENT_OVERHEAD: usize = 26;
pub const MAX_EVENT_BYTES: usize = 262_144 - EVENT_OVERHEAD;
const DAY_MS: i64 = 24 * 3600 * 1000;
/// Span of one call, kept under 24 hours.
const MAX_SPAN_MS: i64 = DAY_MS - 60_000;
/// Oldest timestamp CloudWatch accepts, with a margin.
const MAX_AGE_MS: i64 = 14 * DAY_MS - 3600 * 1000;

pub struct Cloudwatch {
    aws: Aws,
    group: String,
    stream: String,
    /// The sequence token CloudWatch asked for last (only old-style streams).
    token: Option<String>,
    /// Timestamp of the last event sent; later ones never go below it.
    last_ms: i64,
}

impl Cloudwatch {
    pub fn new(aws: Aws, group: String, stream: String) -> Cloudwatch {
        Cloudwatch {
            aws,
            group,
            stream,
            token: None,
            last_ms: 0,
        }
    }

    pub async fn deliver(&mut self, lines: &[Line]) -> Delivery {
        let now_ms = crate::domain::audit::now_us() / 1000;
        let events = to_log_events(lines, self.last_ms, now_ms);
        let mut delivered = 0;
        for batch in batches(&events) {
            let part = &events[delivered..delivered + batch];
            let mut attempts = 0;
            loop {
                attempts += 1;
                match logs::put_log_events(
                    &self.aws,
                    &self.group,
                    &self.stream,
                    part,
                    self.token.as_deref(),
                )
                .await
                {
                    Put::Accepted {
                        next_token,
                        rejected,
                    } => {
                        self.token = next_token;
                        if let Some(rejected) = rejected {
                            // Not acknowledged: the lag grows and export.lagging
                            // names the reason.
                            return Delivery::failed(
                                delivered,
                                format!(
                                    "CloudWatch rejected events of seq {}..={}: {rejected}",
                                    lines[delivered].seq,
                                    lines[delivered + batch - 1].seq
                                ),
                            );
                        }
                        break;
                    }
                    Put::NoStream if attempts <= 2 => {
                        if let Err(e) =
                            logs::create_log_stream(&self.aws, &self.group, &self.stream).await
                        {
                            return Delivery::failed(delivered, e.to_string());
                        }
                        self.token = None;
                    }
                    Put::SequenceToken(expected) if attempts <= 3 => {
                        self.token = expected;
                    }
                    Put::NoStream => {
                        return Delivery::failed(delivered, "the log stream cannot be created");
                    }
                    Put::SequenceToken(_) => {
                        return Delivery::failed(delivered, "the sequence token keeps changing");
                    }
                    Put::Failed(e) => return Delivery::failed(delivered, e.to_string()),
                }
            }
            delivered += batch;
            if let Some(last) = part.last() {
                self.last_ms = last.timestamp_ms;
            }
        }
        Delivery::all(lines)
    }
}

/// Lines as log events: non-decreasing timestamps (from `floor_ms`), none
/// older than CloudWatch accepts, oversized messages replaced by stubs.
pub fn to_log_events(lines: &[Line], floor_ms: i64, now_ms: i64) -> Vec<LogEvent> {
    let mut last = floor_ms.max(now_ms - MAX_AGE_MS);
    lines
        .iter()
        .map(|line| {
            let timestamp_ms = (line.time_us / 1000).max(last);
            last = timestamp_ms;
            let message = if line.text.len() > MAX_EVENT_BYTES {
                stub(line)
            } else {
                line.text.clone()
            };
            LogEvent {
                timestamp_ms,
                message,
            }
        })
        .collect()
}

/// Sizes of consecutive `PutLogEvents` calls covering `events`.
pub fn batches(events: &[LogEvent]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut count = 0;
    let mut bytes = 0;
    let mut first_ms = 0;
    for event in events {
        let size = event.message.len() + EVENT_OVERHEAD;
        let full = count == MAX_EVENTS
            || bytes + size > MAX_BYTES
            || (count > 0 && event.timestamp_ms - first_ms > MAX_SPAN_MS);
        if full {
            out.push(count);
            count = 0;
            bytes = 0;
        }
        if count == 0 {
            first_ms = event.timestamp_ms;
        }
        count += 1;
        bytes += size;
    }
    if count > 0 {
        out.push(count);
    }
    out
}

/// What stands in for an event too large for CloudWatch.
fn stub(line: &Line) -> String {
    let parsed: serde_json::Value = serde_json::from_str(&line.text).unwrap_or_default();
    let pick = |key: &str| parsed.get(key).cloned().unwrap_or_default();
    serde_json::json!({
        "seq": line.seq,
        "id": pick("id"),
        "time": pick("time"),
        "kind": pick("kind"),
        "hash": pick("hash"),
        "prev_hash": pick("prev_hash"),
        "truncated": true,
        "size": line.text.len(),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: i64, time_ms: i64, len: usize) -> Line {
        Line {
            seq,
            time_us: time_ms * 1000,
            text: "x".repeat(len),
        }
    }

    fn check(lines: &[Line], now_ms: i64) -> (Vec<LogEvent>, Vec<usize>) {
        let events = to_log_events(lines, 0, now_ms);
        let sizes = batches(&events);
        assert_eq!(sizes.iter().sum::<usize>(), events.len());
        let mut start = 0;
        for size in &sizes {
            let part = &events[start..start + size];
            assert!(*size <= MAX_EVENTS);
            let bytes: usize = part.iter().map(|e| e.message.len() + EVENT_OVERHEAD).sum();
            assert!(bytes <= MAX_BYTES, "{bytes} bytes in one call");
            assert!(
                part.windows(2)
                    .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms)
            );
            assert!(part[size - 1].timestamp_ms - part[0].timestamp_ms < DAY_MS);
            start += size;
        }
        (events, sizes)
    }

    #[test]
    fn batches_respect_count_bytes_and_span() {
        let now = 1_800_000_000_000;
        // Count: 25,000 small events.
        let lines: Vec<Line> = (1..=25_000).map(|i| line(i, now - 1000, 10)).collect();
        assert_eq!(check(&lines, now).1, vec![10_000, 10_000, 5000]);
        // Bytes: 5 events of 300 KB... each is stubbed; 40 of 100 KB are cut by size.
        let lines: Vec<Line> = (1..=40).map(|i| line(i, now, 100_000)).collect();
        let (_, sizes) = check(&lines, now);
        assert_eq!(sizes[0], 1_048_576 / (100_000 + 26));
        // Span: events 30 hours apart go into separate calls.
        let lines = vec![line(1, now - 30 * 3_600_000, 10), line(2, now, 10)];
        assert_eq!(check(&lines, now).1, vec![1, 1]);
    }

    #[test]
    fn timestamps_never_go_backwards_nor_past_fourteen_days() {
        let now = 1_800_000_000_000;
        let lines = vec![
            line(1, now - 20 * DAY_MS, 5),
            line(2, now - 500, 5),
            line(3, now - 900, 5),
        ];
        let (events, _) = check(&lines, now);
        assert!(events[0].timestamp_ms >= now - 14 * DAY_MS);
        assert_eq!(events[1].timestamp_ms, now - 500);
        assert_eq!(events[2].timestamp_ms, now - 500);
    }

    #[test]
    fn oversized_events_become_stubs_that_name_their_place_in_the_chain() {
        let big = format!(
            "{{\"seq\":7,\"hash\":\"aa\",\"prev_hash\":\"bb\",\"details\":\"{}\"}}",
            "y".repeat(300_000)
        );
        let lines = vec![Line {
            seq: 7,
            time_us: 0,
            text: big,
        }];
        let events = to_log_events(&lines, 0, 1_800_000_000_000);
        let stub: serde_json::Value = serde_json::from_str(&events[0].message).unwrap();
        assert_eq!(stub["seq"], 7);
        assert_eq!(stub["hash"], "aa");
        assert_eq!(stub["truncated"], true);
    }
}
