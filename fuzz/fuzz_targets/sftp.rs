//! Fuzzes the SFTP auditor the broker runs on every SFTP channel: both
//! directions, cut into reads at random places, must give the same
//! operations (and the same refusal) as the stream read whole, and never
//! panic or hold more than a packet.
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run sftp -- -max_total_time=600`

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/ssh/sftp.rs"]
#[allow(dead_code)]
mod sftp;

use sftp::{Auditor, Operation};

/// Client bytes, then server bytes, `piece` at a time (0: whole). Returns
/// the operations, and whether the client side was refused.
fn run(client: &[u8], server: &[u8], piece: usize) -> (Vec<Operation>, bool) {
    let mut auditor = Auditor::default();
    let mut ops = Vec::new();
    let piece = if piece == 0 { usize::MAX } else { piece };
    let mut refused = false;
    for part in client.chunks(piece.min(client.len().max(1))) {
        match auditor.client(part) {
            Ok(seen) => ops.extend(seen),
            Err(_) => {
                refused = true;
                break;
            }
        }
    }
    if refused {
        // Refused: the auditor stays refused, whatever comes.
        assert!(auditor.client(b"more").is_err());
        return (ops, true);
    }
    for part in server.chunks(piece.min(server.len().max(1))) {
        ops.extend(auditor.server(part));
    }
    ops.extend(auditor.finish());
    (ops, false)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let piece = data[0] as usize % 37 + 1;
    let split = (data[1] as usize * 7) % (data.len() - 1) + 2;
    let (client, server) = data[2..].split_at((split - 2).min(data.len() - 2));
    let (whole, whole_refused) = run(client, server, 0);
    let (cut, cut_refused) = run(client, server, piece);
    assert_eq!(whole_refused, cut_refused);
    if !whole_refused {
        assert_eq!(whole, cut);
    }
});
