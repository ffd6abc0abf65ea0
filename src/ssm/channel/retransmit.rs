//! Reliable delivery of what the client sends (docs/aws-protocols.md 1.8):
//! a frame enters the unacknowledged buffer before it is written; the oldest
//! one is resent after its RTO (Jacobson/Karels, Karn's rule); acks remove
//! frames and sample the round trip.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::Engine;
use crate::ssm::Error;
use crate::ssm::codec::{self, ClientMessage};

/// Resends are at least this far apart, like the plugin's 100 ms resend
/// tick, so `resend_max_attempts` = 3000 still means about 5 minutes even
/// when the RTO is a few milliseconds.
const MIN_RESEND_INTERVAL: Duration = Duration::from_millis(100);

/// Round-trip estimate and retransmission timeout (docs/aws-protocols.md 1.8).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rtt {
    srtt: f64,
    rttvar: f64,
    rto: Duration,
}

impl Rtt {
    const GRANULARITY: f64 = 0.010;
    const MAX_RTO: Duration = Duration::from_secs(1);

    pub(crate) fn new() -> Rtt {
        Rtt {
            srtt: 0.100,
            rttvar: 0.0,
            rto: Duration::from_millis(200),
        }
    }

    pub(crate) fn sample(&mut self, sample: Duration) {
        let sample = sample.as_secs_f64();
        self.rttvar = 0.75 * self.rttvar + 0.25 * (self.srtt - sample).abs();
        self.srtt = 0.875 * self.srtt + 0.125 * sample;
        let rto = self.srtt + (4.0 * self.rttvar).max(Self::GRANULARITY);
        self.rto = Duration::from_secs_f64(rto).min(Self::MAX_RTO);
    }

    pub(crate) fn rto(&self) -> Duration {
        self.rto
    }
}

/// A sent frame waiting for its acknowledgement.
pub(super) struct Unacked {
    pub(super) sequence: i64,
    pub(super) frame: Bytes,
    pub(super) last_sent: Instant,
    pub(super) attempts: u32,
}

impl Engine {
    /// When the oldest unacknowledged frame is due again. Only while acks
    /// can arrive: a socket, the remote side active, and the socket being
    /// read (a slow consumer holds acks back in the socket, and they must
    /// not count as lost).
    pub(super) fn retransmit_at(&self, reading: bool) -> Option<Instant> {
        match self.unacked.front() {
            Some(oldest) if reading && !self.paused => {
                let wait = if oldest.attempts == 0 {
                    self.rtt.rto()
                } else {
                    self.rtt.rto().max(MIN_RESEND_INTERVAL)
                };
                Some(oldest.last_sent + wait)
            }
            _ => None,
        }
    }

    pub(super) fn on_ack(&mut self, message: &ClientMessage) {
        // Only the sequence number matters (as in the plugin); parsing just
        // that allocates nothing.
        #[derive(serde::Deserialize)]
        struct Acknowledged {
            #[serde(rename = "AcknowledgedMessageSequenceNumber")]
            sequence: i64,
        }
        let Ok(Acknowledged { sequence }) = message.json("acknowledge") else {
            return;
        };
        if let Some(index) = self.unacked.iter().position(|u| u.sequence == sequence)
            && let Some(acked) = self.unacked.remove(index)
            && acked.attempts == 0
        {
            // Karn: a retransmitted message's ack is ambiguous, no sample.
            self.rtt.sample(acked.last_sent.elapsed());
        }
    }

    /// Assigns the next sequence number, buffers the frame, then writes it.
    pub(super) async fn send_stream(&mut self, mut frame: BytesMut) {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        codec::set_sequence_number(&mut frame, sequence);
        let frame = frame.freeze();
        self.unacked.push_back(Unacked {
            sequence,
            frame: frame.clone(),
            last_sent: Instant::now(),
            attempts: 0,
        });
        self.write(Message::Binary(frame)).await;
    }

    pub(super) async fn retransmit(&mut self) {
        let max = self.options.resend_max_attempts;
        let Some(oldest) = self.unacked.front_mut() else {
            return;
        };
        if oldest.attempts >= max {
            let sequence = oldest.sequence;
            return self.fail(Error::ResendTimeout {
                sequence,
                attempts: max,
            });
        }
        oldest.attempts += 1;
        oldest.last_sent = Instant::now();
        let frame = oldest.frame.clone();
        tracing::debug!(
            sequence = oldest.sequence,
            attempt = oldest.attempts,
            "resending"
        );
        self.write(Message::Binary(frame)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rto_follows_jacobson_karels() {
        let mut rtt = Rtt::new();
        assert_eq!(rtt.rto(), Duration::from_millis(200));
        // One 100 ms sample equal to the initial estimate: RTTVAR stays 0,
        // so the RTO is SRTT plus the 10 ms clock granularity.
        rtt.sample(Duration::from_millis(100));
        assert_eq!(rtt.rto().as_millis(), 110);
        // Fast loopback samples pull it down.
        for _ in 0..100 {
            rtt.sample(Duration::from_micros(200));
        }
        assert!(rtt.rto() < Duration::from_millis(12), "{:?}", rtt.rto());
        assert!(rtt.rto() >= Duration::from_millis(10));
        // A slow network is capped at 1 s.
        for _ in 0..100 {
            rtt.sample(Duration::from_secs(5));
        }
        assert_eq!(rtt.rto(), Duration::from_secs(1));
    }

    #[test]
    fn variance_widens_the_timeout() {
        let mut rtt = Rtt::new();
        // 100 ms then 300 ms: RTTVAR = 0.25·0.2 = 50 ms; SRTT = 125 ms;
        // RTO = 125 + 4·50 = 325 ms.
        rtt.sample(Duration::from_millis(100));
        rtt.sample(Duration::from_millis(300));
        assert_eq!(rtt.rto().as_millis(), 325);
    }
}
