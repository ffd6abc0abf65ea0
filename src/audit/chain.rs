//! The hash chain: a canonical encoding of each event, SHA-256 over the
//! previous hash and that encoding, and signed checkpoints.
//!
//! Encoding: a version tag, then every field in a fixed order; integers are
//! 8-byte big-endian, strings are a 4-byte big-endian length and the UTF-8
//! bytes, and an absent value is the length `0xFFFFFFFF`. `details` is hashed
//! exactly as stored (canonical JSON with sorted keys).

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::domain::audit::{AuditEvent, Checkpoint, EventRecord};
use crate::keys::Ed25519Key;

/// The hash the first event chains onto.
pub const GENESIS: [u8; 32] = [0; 32];

const EVENT_TAG: &[u8] = b"pam.audit.event.v1\n";
const CHECKPOINT_TAG: &[u8] = b"pam.audit.checkpoint.v1\n";

/// Places `event` at `seq` after `prev_hash`.
pub fn chain(event: &AuditEvent, seq: i64, prev_hash: &[u8]) -> EventRecord {
    let mut record = EventRecord {
        seq,
        id: event.id.to_string(),
        time_us: event.time_us,
        kind: event.kind.as_str().to_owned(),
        actor: event.actor.clone(),
        source_ip: event.source_ip.clone(),
        target: event.target.clone(),
        session_id: event.session_id.clone(),
        outcome: event.outcome.as_str().to_owned(),
        details: canonical_json(&event.details),
        prev_hash: prev_hash.to_vec(),
        hash: Vec::new(),
    };
    record.hash = hash(&record).to_vec();
    record
}

/// SHA-256 over the record's `prev_hash` and its canonical encoding.
pub fn hash(record: &EventRecord) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(&record.prev_hash);
    hasher.update(EVENT_TAG);
    hasher.update(record.seq.to_be_bytes());
    put_str(&mut hasher, Some(&record.id));
    hasher.update(record.time_us.to_be_bytes());
    put_str(&mut hasher, Some(&record.kind));
    put_str(&mut hasher, record.actor.as_deref());
    put_str(&mut hasher, record.source_ip.as_deref());
    put_str(&mut hasher, record.target.as_deref());
    put_str(&mut hasher, record.session_id.as_deref());
    put_str(&mut hasher, Some(&record.outcome));
    put_str(&mut hasher, Some(&record.details));
    hasher.finalize().into()
}

fn put_str(hasher: &mut Sha256, value: Option<&str>) {
    match value {
        Some(s) => {
            let len = u32::try_from(s.len()).unwrap_or(u32::MAX - 1);
            hasher.update(len.to_be_bytes());
            hasher.update(s.as_bytes());
        }
        None => hasher.update(u32::MAX.to_be_bytes()),
    }
}

/// The bytes a checkpoint signature covers.
pub fn checkpoint_message(seq: i64, time_us: i64, hash: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(CHECKPOINT_TAG.len() + 16 + hash.len());
    message.extend_from_slice(CHECKPOINT_TAG);
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(&time_us.to_be_bytes());
    message.extend_from_slice(hash);
    message
}

pub fn sign_checkpoint(key: &Ed25519Key, seq: i64, time_us: i64, hash: &[u8]) -> Checkpoint {
    Checkpoint {
        seq,
        time_us,
        hash: hash.to_vec(),
        key_id: key.key_id(),
        signature: key.sign(&checkpoint_message(seq, time_us, hash)),
    }
}

pub fn checkpoint_valid(public: &[u8], checkpoint: &Checkpoint) -> bool {
    Ed25519Key::verify(
        public,
        &checkpoint_message(checkpoint.seq, checkpoint.time_us, &checkpoint.hash),
        &checkpoint.signature,
    )
}

/// JSON with object keys sorted and no whitespace, whatever map order
/// serde_json was built with.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audit::{EventKind, Outcome};
    use serde_json::json;

    fn event() -> AuditEvent {
        let mut e = AuditEvent::new(EventKind::LoginSuccess, Outcome::Success)
            .actor("alice@example.test")
            .details(json!({"b": 1, "a": {"z": [1, 2], "y": null}}));
        e.time_us = 1_700_000_000_000_000;
        e
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        assert_eq!(
            canonical_json(&json!({"b": 1, "a": {"z": [1, {"d": 1, "c": 2}], "y": "x\"y"}})),
            r#"{"a":{"y":"x\"y","z":[1,{"c":2,"d":1}]},"b":1}"#
        );
    }

    #[test]
    fn every_field_is_covered_by_the_hash() {
        let base = chain(&event(), 1, &GENESIS);
        assert_eq!(hash(&base).to_vec(), base.hash);
        type Mutation = Box<dyn Fn(&mut EventRecord)>;
        let mutations: Vec<Mutation> = vec![
            Box::new(|r| r.seq = 2),
            Box::new(|r| r.id.push('x')),
            Box::new(|r| r.time_us += 1),
            Box::new(|r| r.kind = "login.failure".into()),
            Box::new(|r| r.actor = None),
            Box::new(|r| r.source_ip = Some("10.0.0.1".into())),
            Box::new(|r| r.target = Some("t".into())),
            Box::new(|r| r.session_id = Some("s".into())),
            Box::new(|r| r.outcome = "failure".into()),
            Box::new(|r| r.details = "{}".into()),
            Box::new(|r| r.prev_hash[0] ^= 1),
        ];
        for (i, mutate) in mutations.iter().enumerate() {
            let mut r = base.clone();
            mutate(&mut r);
            assert_ne!(hash(&r).to_vec(), base.hash, "mutation {i} went unnoticed");
        }
    }

    #[test]
    fn absent_and_empty_strings_differ() {
        let mut a = chain(&event(), 1, &GENESIS);
        a.target = None;
        let mut b = a.clone();
        b.target = Some(String::new());
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn checkpoints_verify_only_with_the_right_key() {
        let key = crate::keys::KeyMaterial::load_or_generate(tempfile::tempdir().unwrap().path())
            .unwrap()
            .0
            .audit;
        let other = crate::keys::KeyMaterial::load_or_generate(tempfile::tempdir().unwrap().path())
            .unwrap()
            .0
            .audit;
        let c = sign_checkpoint(&key, 10, 5, &[7; 32]);
        assert!(checkpoint_valid(&key.public_bytes(), &c));
        assert!(!checkpoint_valid(&other.public_bytes(), &c));
        let mut forged = c.clone();
        forged.hash[0] ^= 1;
        assert!(!checkpoint_valid(&key.public_bytes(), &forged));
    }
}
