//! The S3 sink: one gzipped JSON-lines object per batch (at most
//! `batch_max` events or `flush_interval` of them), under date-partitioned
//! keys that sort by `seq`:
//!
//! `PREFIX/dt=YYYY-MM-DD/hour=HH/<first seq>-<last seq>.jsonl.gz`
//!
//! with the date and hour (UTC) of the first event and both `seq`s
//! zero-padded to 20 digits. A batch sent again after a restart lands under
//! the same first `seq` (and overwrites, or adds a version, when its last
//! `seq` matches); its events carry their `seq`, so overlaps are harmless.
//! On a bucket with Object Lock default retention every object is locked:
//! the upload carries Content-MD5 and a SHA-256 checksum as S3 requires.

use std::io::Write as _;

use flate2::Compression;
use flate2::write::GzEncoder;

use super::{Delivery, Line};
use crate::aws::Aws;
use crate::domain::audit::from_us;

pub struct S3 {
    aws: Aws,
    bucket: String,
    /// Without leading or trailing slashes; may be empty.
    prefix: String,
    sink: String,
}

impl S3 {
    pub fn new(aws: Aws, url: &url::Url, sink: &str) -> S3 {
        S3 {
            aws,
            bucket: url.host_str().unwrap_or_default().to_owned(),
            prefix: url.path().trim_matches('/').to_owned(),
            sink: sink.to_owned(),
        }
    }

    pub async fn deliver(&mut self, lines: &[Line]) -> Delivery {
        let (Some(first), Some(last)) = (lines.first(), lines.last()) else {
            return Delivery::all(lines);
        };
        let body = match gzip(lines) {
            Ok(body) => body,
            Err(e) => return Delivery::failed(0, format!("compressing: {e}")),
        };
        let key = object_key(&self.prefix, first, last.seq);
        let metadata = [
            ("pam-sink", self.sink.clone()),
            ("pam-first-seq", first.seq.to_string()),
            ("pam-last-seq", last.seq.to_string()),
            ("pam-events", lines.len().to_string()),
        ];
        match crate::aws::s3::put_object(
            &self.aws,
            &self.bucket,
            &key,
            body,
            "application/gzip",
            &metadata,
        )
        .await
        {
            Ok(_) => Delivery::all(lines),
            Err(e) => Delivery::failed(0, e.to_string()),
        }
    }
}

/// `PREFIX/dt=YYYY-MM-DD/hour=HH/FIRST-LAST.jsonl.gz`.
pub fn object_key(prefix: &str, first: &Line, last_seq: i64) -> String {
    let t = from_us(first.time_us);
    let name = format!(
        "dt={:04}-{:02}-{:02}/hour={:02}/{:020}-{:020}.jsonl.gz",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        first.seq,
        last_seq
    );
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

fn gzip(lines: &[Line]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    for line in lines {
        encoder.write_all(line.text.as_bytes())?;
        encoder.write_all(b"\n")?;
    }
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_partitioned_by_the_first_events_hour_and_sort_by_seq() {
        let first = Line {
            seq: 42,
            time_us: 1_795_689_093_123_456, // 2026-11-26T10:31:33Z
            text: String::new(),
        };
        assert_eq!(
            object_key("audit/prod", &first, 1041),
            "audit/prod/dt=2026-11-26/hour=10/00000000000000000042-00000000000000001041.jsonl.gz"
        );
        assert_eq!(
            object_key("", &first, 42),
            "dt=2026-11-26/hour=10/00000000000000000042-00000000000000000042.jsonl.gz"
        );
        assert!(
            object_key("", &first, 99)
                < object_key(
                    "",
                    &Line {
                        seq: 100,
                        ..first.clone()
                    },
                    100
                )
        );
    }

    #[test]
    fn objects_are_gzipped_json_lines() {
        use std::io::Read as _;
        let lines = vec![
            Line {
                seq: 1,
                time_us: 0,
                text: "{\"seq\":1}".into(),
            },
            Line {
                seq: 2,
                time_us: 0,
                text: "{\"seq\":2}".into(),
            },
        ];
        let mut text = String::new();
        flate2::read::GzDecoder::new(&gzip(&lines).unwrap()[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "{\"seq\":1}\n{\"seq\":2}\n");
    }
}
