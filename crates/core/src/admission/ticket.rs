//! Signed retry tickets: a compact proof that this node reserved a token for the holder's slot.
//!
//! A rejected client that said it can carry tickets gets one with its Retry-After. When it comes
//! back inside its slot, the ticket claims the token reserved for it, so fresh arrivals cannot
//! take it (FIFO fairness, no wasted retries).
//!
//! Layout (41 bytes, 55 characters base64url without padding, RFC 4648 §5):
//!
//! ```text
//! version(1) | node id(8) | slot unix ms(8) | seq(4) | instance id(4) | HMAC-SHA256[..16]
//! ```
//!
//! It must fit in a WebSocket close reason (at most 123 bytes, RFC 6455 §5.5) together with
//! `{"retry_after_ms":N,"ticket":"..."}`, hence [`TICKET_MAX_LEN`]. A 128-bit truncated MAC
//! is ample for tickets that live a few minutes at most (RFC 2104 §5 allows truncation to half
//! the hash length). Any instance holding the same key can verify a ticket; the instance id says
//! which instance reserved the token and so who was already charged for it.

use std::path::Path;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::{digest, hmac};

use super::clock::{duration_to_nanos, Nanos, NANOS_PER_MILLI, NANOS_PER_SEC};
use super::AdmissionError;

/// Upper bound on an encoded ticket, so that the close-reason JSON stays within 123 bytes.
pub use herdgate_wire::TICKET_MAX_LEN;
/// Minimum key length: HMAC-SHA256 wants at least the hash length (RFC 2104 §3).
pub const TICKET_KEY_MIN_LEN: usize = 32;

const VERSION: u8 = 1;
const PAYLOAD_LEN: usize = 25;
const MAC_LEN: usize = 16;
const RAW_LEN: usize = PAYLOAD_LEN + MAC_LEN;
/// base64url without padding of 41 bytes.
const ENCODED_LEN: usize = (RAW_LEN * 4).div_ceil(3);
const _: () = assert!(ENCODED_LEN <= TICKET_MAX_LEN);

/// What checking a presented ticket found. Reported in every decision, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TicketCheck {
    /// No ticket was presented.
    None,
    /// Genuine, for this node, inside its window, first use.
    Valid,
    /// Genuine but presented before its slot (minus the early tolerance).
    Early,
    /// Genuine but presented after its claim window.
    Late,
    /// The MAC does not match (tampered, or signed with another key).
    Forged,
    /// Genuine but already claimed.
    Reused,
    /// Genuine but for another node.
    OtherNode,
    /// Genuine and timely, but its reservation is no longer tracked by this node (the node state
    /// was rebuilt, or the reservation fell out of the bounded replay window).
    Expired,
    /// Not a ticket at all (wrong length, alphabet or version).
    Malformed,
}

impl TicketCheck {
    /// Stable lowercase label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Valid => "valid",
            Self::Early => "early",
            Self::Late => "late",
            Self::Forged => "forged",
            Self::Reused => "reused",
            Self::OtherNode => "other_node",
            Self::Expired => "expired",
            Self::Malformed => "malformed",
        }
    }
}

/// The authenticated content of a ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketClaims {
    /// [`node_id`] of the node holding the reservation.
    pub node: u64,
    /// Reserved slot, unix milliseconds (truncated).
    pub slot_ms: u64,
    /// Low 32 bits of the node's reservation sequence number.
    pub seq: u32,
    /// Instance id of the herdgate process that reserved (and paid for) the token.
    pub instance: u32,
}

impl TicketClaims {
    /// The slot in nanoseconds since the epoch (a lower bound of the real slot: ms truncation).
    pub fn slot(&self) -> Nanos {
        self.slot_ms.saturating_mul(NANOS_PER_MILLI)
    }

    /// True while the ticket is inside its window at `now`: from one emission interval of a
    /// node admitting `rate` per second (at least [`super::TICKET_EARLY_TOLERANCE`]) before
    /// its slot, to `claim_window` after it (plus the millisecond the slot was truncated
    /// by): the same window in which the node would honour it. Outside it a ticket must
    /// not steer routing either: a stale ticket would pin a client to a node long after
    /// its reservation lapsed.
    pub fn in_window(&self, now: Nanos, rate: f64, claim_window: std::time::Duration) -> bool {
        let slot = self.slot();
        // As the bucket's emission interval: float to int `as` saturates.
        let t = (NANOS_PER_SEC as f64 / rate).round().max(1.0) as u64;
        let early = t.max(duration_to_nanos(super::TICKET_EARLY_TOLERANCE));
        let late = duration_to_nanos(claim_window).saturating_add(NANOS_PER_MILLI);
        now >= slot.saturating_sub(early) && now <= slot.saturating_add(late)
    }
}

/// The HMAC key that signs tickets; share it between instances that must honour each other's.
pub struct TicketKey {
    key: hmac::Key,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(..)")
    }
}

impl TicketKey {
    /// A fresh key from the OS-seeded CSPRNG: tickets then only verify on this process.
    pub fn random() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
        }
    }

    /// A key from raw bytes (at least [`TICKET_KEY_MIN_LEN`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AdmissionError> {
        if bytes.len() < TICKET_KEY_MIN_LEN {
            return Err(AdmissionError::KeyTooShort { len: bytes.len() });
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        })
    }

    /// Reads a key file holding at least 32 bytes: hex text, base64 text (standard or url-safe,
    /// padded or not), or raw bytes, tried in that order. Surrounding whitespace in text forms
    /// is ignored (a trailing newline from `openssl rand -hex 32 > key` is the usual case).
    pub fn from_file(path: &Path) -> Result<Self, AdmissionError> {
        let err = |reason: String| AdmissionError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let raw = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let bytes = decode_key_text(&raw).unwrap_or(raw);
        if bytes.len() < TICKET_KEY_MIN_LEN {
            return Err(err(format!(
                "holds {} key bytes, need at least {TICKET_KEY_MIN_LEN} (raw, hex or base64); \
                 make one with `openssl rand -hex 32`",
                bytes.len()
            )));
        }
        Self::from_bytes(&bytes)
    }
}

/// Decodes hex or base64 text that yields a long enough key, else `None` (treat as raw).
fn decode_key_text(raw: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    if let Some(bytes) = decode_hex(text) {
        if bytes.len() >= TICKET_KEY_MIN_LEN {
            return Some(bytes);
        }
    }
    [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
        .iter()
        .filter_map(|engine| engine.decode(text).ok())
        .find(|bytes| bytes.len() >= TICKET_KEY_MIN_LEN)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

/// Signs and verifies tickets for one herdgate instance.
#[derive(Debug)]
pub struct TicketSigner {
    key: TicketKey,
    instance: u32,
}

impl TicketSigner {
    /// `instance` identifies this process among those sharing the key. Make it unique per
    /// process start ([`TicketSigner::with_random_instance`]): a ticket from an earlier run
    /// must not be mistaken for one whose token this run already reserved.
    pub fn new(key: TicketKey, instance: u32) -> Self {
        Self { key, instance }
    }

    /// A signer with a random instance id.
    pub fn with_random_instance(key: TicketKey) -> Self {
        Self::new(key, rand::random())
    }

    /// This instance's id.
    pub fn instance(&self) -> u32 {
        self.instance
    }

    /// Signs a ticket for `node`'s reservation `seq` at `slot`.
    pub fn sign(&self, node: u64, slot: Nanos, seq: u32) -> String {
        let mut raw = [0u8; RAW_LEN];
        raw[0] = VERSION;
        raw[1..9].copy_from_slice(&node.to_be_bytes());
        raw[9..17].copy_from_slice(&(slot / NANOS_PER_MILLI).to_be_bytes());
        raw[17..21].copy_from_slice(&seq.to_be_bytes());
        raw[21..25].copy_from_slice(&self.instance.to_be_bytes());
        let tag = hmac::sign(&self.key.key, &raw[..PAYLOAD_LEN]);
        raw[PAYLOAD_LEN..].copy_from_slice(&tag.as_ref()[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks the encoding and the MAC; the caller checks node, time and replay. Allocates
    /// nothing.
    pub fn verify(&self, ticket: &str) -> Result<TicketClaims, TicketCheck> {
        if ticket.len() != ENCODED_LEN {
            return Err(TicketCheck::Malformed);
        }
        let mut raw = [0u8; RAW_LEN];
        match URL_SAFE_NO_PAD.decode_slice(ticket, &mut raw) {
            Ok(RAW_LEN) => {}
            _ => return Err(TicketCheck::Malformed),
        }
        if raw[0] != VERSION {
            return Err(TicketCheck::Malformed);
        }
        let tag = hmac::sign(&self.key.key, &raw[..PAYLOAD_LEN]);
        if !constant_time_eq(&tag.as_ref()[..MAC_LEN], &raw[PAYLOAD_LEN..]) {
            return Err(TicketCheck::Forged);
        }
        Ok(TicketClaims {
            node: u64::from_be_bytes(field(&raw[1..9])),
            slot_ms: u64::from_be_bytes(field(&raw[9..17])),
            seq: u32::from_be_bytes(field(&raw[17..21])),
            instance: u32::from_be_bytes(field(&raw[21..25])),
        })
    }
}

fn field<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

/// Compares without an early exit so the time taken does not reveal the matching prefix
/// (ring's own helper is deprecated in 0.17 and `hmac::verify` wants the full tag).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Stable 64-bit id of a backend node, the same on every instance and across releases.
///
/// It hashes the pool and node *names*, not the address: re-addressing a node (a new IP after
/// a reschedule) keeps outstanding tickets valid, while two pools can reuse a node name.
pub fn node_id(pool: &str, node: &str) -> u64 {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"herdgate/node-id/v1");
    for part in [pool, node] {
        // Length-prefixed so ("ab","c") and ("a","bc") differ.
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    let d = ctx.finish();
    u64::from_be_bytes(field(&d.as_ref()[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn signer(instance: u32) -> TicketSigner {
        TicketSigner::new(TicketKey::from_bytes(&[7u8; 32]).unwrap(), instance)
    }

    #[test]
    fn window_opens_just_before_the_slot_and_closes_after_the_claim_window() {
        let ms = NANOS_PER_MILLI;
        let c = TicketClaims {
            node: 1,
            slot_ms: 1_000_000,
            seq: 0,
            instance: 0,
        };
        let slot = c.slot();
        let cw = std::time::Duration::from_secs(2);
        // A fast node: the early tolerance is 50 ms.
        assert!(!c.in_window(slot - 51 * ms, 200.0, cw), "too early");
        assert!(c.in_window(slot - 50 * ms, 200.0, cw));
        assert!(c.in_window(slot, 200.0, cw));
        assert!(c.in_window(slot + 2001 * ms, 200.0, cw));
        assert!(!c.in_window(slot + 2001 * ms + 1, 200.0, cw), "too late");
        assert!(!c.in_window(slot + 3_600_000 * ms, 200.0, cw), "stale");
        assert!(!c.in_window(0, 200.0, cw));
        // A slow node (1/s): one emission interval early is fine.
        assert!(c.in_window(slot - 1000 * ms, 1.0, cw));
        assert!(!c.in_window(slot - 1001 * ms, 1.0, cw));
        // Extremes saturate instead of overflowing.
        let far = TicketClaims {
            slot_ms: u64::MAX,
            ..c
        };
        assert!(far.in_window(u64::MAX, 1e-300, cw));
        assert!(!far.in_window(0, 1e9, cw));
        let zero = TicketClaims { slot_ms: 0, ..c };
        assert!(zero.in_window(0, 1e9, std::time::Duration::MAX));
    }

    #[test]
    fn round_trip_and_length() {
        let s = signer(9);
        let t = s.sign(u64::MAX, u64::MAX, u32::MAX);
        assert_eq!(t.len(), ENCODED_LEN);
        assert!(t.len() <= TICKET_MAX_LEN);
        let json = format!(r#"{{"retry_after_ms":{},"ticket":"{t}"}}"#, u64::MAX);
        assert!(json.len() <= 123, "close reason {} bytes", json.len());
        let c = s.verify(&t).unwrap();
        assert_eq!(c.node, u64::MAX);
        assert_eq!(c.slot_ms, u64::MAX / NANOS_PER_MILLI);
        assert_eq!((c.seq, c.instance), (u32::MAX, 9));
        let t = s.sign(42, 1_700_000_000_123_456_789, 5);
        let c = s.verify(&t).unwrap();
        assert_eq!(c.slot(), 1_700_000_000_123_000_000);
    }

    #[test]
    fn every_flipped_character_is_rejected() {
        let s = signer(1);
        let t = s.sign(1, 2_000_000_000_000, 3);
        for i in 0..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let bad = String::from_utf8(b).unwrap();
            let r = s.verify(&bad);
            assert!(
                matches!(r, Err(TicketCheck::Forged | TicketCheck::Malformed)),
                "pos {i}: {r:?}"
            );
        }
    }

    #[test]
    fn other_key_is_forged_shared_key_verifies() {
        let t = signer(1).sign(1, 2, 3);
        let other = TicketSigner::new(TicketKey::from_bytes(&[8u8; 32]).unwrap(), 1);
        assert_eq!(other.verify(&t), Err(TicketCheck::Forged));
        assert_eq!(signer(2).verify(&t).unwrap().instance, 1);
    }

    #[test]
    fn garbage_is_malformed() {
        let s = signer(1);
        for bad in [
            "",
            "abc",
            "!!!!",
            &"A".repeat(ENCODED_LEN + 1),
            &"*".repeat(ENCODED_LEN),
        ] {
            assert_eq!(s.verify(bad), Err(TicketCheck::Malformed), "{bad}");
        }
        let mut raw = [0u8; RAW_LEN];
        raw[0] = 2;
        assert_eq!(
            s.verify(&URL_SAFE_NO_PAD.encode(raw)),
            Err(TicketCheck::Malformed)
        );
    }

    #[test]
    fn key_file_forms() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, data: &[u8]| {
            let p = dir.path().join(name);
            std::fs::File::create(&p).unwrap().write_all(data).unwrap();
            p
        };
        let hex = write("hex", format!("{}\n", "ab".repeat(32)).as_bytes());
        let b64 = write(
            "b64",
            format!("{}\n", STANDARD.encode([0xabu8; 32])).as_bytes(),
        );
        let raw = write("raw", &[0xab; 32]);
        let mac = |k: TicketKey| TicketSigner::new(k, 0).sign(1, 2, 3);
        let want = mac(TicketKey::from_bytes(&[0xab; 32]).unwrap());
        for p in [&hex, &b64, &raw] {
            assert_eq!(mac(TicketKey::from_file(p).unwrap()), want, "{p:?}");
        }
        let short = write("short", b"0123456789abcdef\n");
        let e = TicketKey::from_file(&short).unwrap_err().to_string();
        assert!(e.contains("short") && e.contains("at least 32"), "{e}");
        let e = TicketKey::from_file(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn node_id_is_stable_and_separates_parts() {
        assert_eq!(node_id("chat", "chat-1"), node_id("chat", "chat-1"));
        assert_ne!(node_id("chat", "chat-1"), node_id("chat", "chat-2"));
        assert_ne!(node_id("ab", "c"), node_id("a", "bc"));
        // Pinned (computed independently with Python's hashlib): changing it would
        // invalidate outstanding tickets across a rolling upgrade.
        assert_eq!(node_id("chat", "chat-1"), 0x4d1b_3525_ce23_7bd8);
    }
}
