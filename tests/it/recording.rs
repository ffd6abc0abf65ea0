//! Recordings are lossless: what a client received is what the real
//! asciicast player replays, byte for byte.
//!
//! The seeds of the `asciicast` fuzz target (`fuzz/seeds/asciicast/`: bytes
//! that are not UTF-8, characters cut between reads, control bytes, a
//! stream that ends inside a character) are written through the broker's
//! recorder, cut as the fuzz target cuts them, and each `.cast` file is
//! played by the real `asciinema cat` (asciinema 2, Python).
//!
//! Bytes that are not UTF-8 are recorded as the lone surrogates
//! `\udc80`..`\udcff` (PEP 383 "surrogateescape", `src/audit/asciicast.rs`).
//! Python's `json` reads them, and with
//! `PYTHONIOENCODING=utf-8:surrogateescape` asciinema writes them out as the
//! original bytes, so every seed, valid UTF-8 or not, is compared exactly.
//! `asciinema cat` puts `/dev/tty` in raw mode, so it runs under `script`
//! (a pseudo-terminal, raw: nothing is translated on the way out).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use bytes::Bytes;
use pam::audit::recording::{Header, Options, Recorder};

/// The fuzz target's input format: `n = data[0] % 4` cut lengths, then the
/// stream, written in pieces of those lengths in turn (0 counts as 1).
fn chunks(seed: &[u8]) -> (Vec<Vec<u8>>, Vec<u8>) {
    let Some((&n, rest)) = seed.split_first() else {
        return (Vec::new(), Vec::new());
    };
    let n = usize::from(n % 4).min(rest.len());
    let (cuts, stream) = rest.split_at(n);
    if cuts.is_empty() {
        return (vec![stream.to_vec()], stream.to_vec());
    }
    let mut out = Vec::new();
    let mut at = 0;
    for cut in cuts.iter().cycle() {
        if at >= stream.len() {
            break;
        }
        let end = (at + usize::from(*cut).max(1)).min(stream.len());
        out.push(stream[at..end].to_vec());
        at = end;
    }
    (out, stream.to_vec())
}

fn seeds() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/asciicast");
    let mut seeds: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 5, "{seeds:?}");
    seeds
}

async fn record(dir: &Path, name: &str, pieces: Vec<Vec<u8>>) -> PathBuf {
    let header = Header {
        width: 80,
        height: 24,
        timestamp: 1_700_000_000,
        title: name.into(),
        term: Some("xterm-256color".into()),
        session_id: name.into(),
        user: "u".into(),
        target: "t".into(),
    };
    let relative = PathBuf::from(format!("{name}.cast"));
    let (recorder, writer) = Recorder::create(dir, &relative, &header, Options::default())
        .await
        .unwrap();
    for piece in pieces {
        recorder.output(Bytes::from(piece)).await.unwrap();
    }
    writer.finish().await.unwrap();
    dir.join(relative)
}

/// What `asciinema cat` writes for `cast`.
async fn asciinema_cat(cast: &Path) -> Vec<u8> {
    let out = tokio::process::Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!("asciinema cat '{}'", cast.display()))
        .arg("/dev/null")
        .env("PYTHONIOENCODING", "utf-8:surrogateescape")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "asciinema cat {}: {}",
        cast.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test]
async fn asciinema_replays_exactly_the_bytes_the_client_received() {
    let dir = tempfile::tempdir().unwrap();
    for seed in seeds() {
        let name = seed.file_name().unwrap().to_string_lossy().into_owned();
        let (pieces, stream) = chunks(&std::fs::read(&seed).unwrap());
        let cast = record(dir.path(), &name, pieces).await;
        let played = asciinema_cat(&cast).await;
        assert_eq!(
            played,
            stream,
            "seed {name}: asciinema replays {:?}, the client received {:?}",
            String::from_utf8_lossy(&played),
            String::from_utf8_lossy(&stream)
        );
    }
}
