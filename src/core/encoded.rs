//! A record's encoded form, filled once by whoever sends it first.
//!
//! Records are immutable and shared (`Arc`), read far more often than they
//! change: the protocol layer encodes one once and every answer and watch
//! event of it sends the same bytes. Protocol-free: core only keeps the
//! bytes; serve/ decides what they are.

use std::sync::OnceLock;

use bytes::Bytes;

/// Empty until first filled; never changes after. A clone is empty, so a
/// record copied to be changed (`..old.clone()`) cannot carry the bytes of
/// the record it was copied from. Ignored by `==`.
#[derive(Default)]
pub struct EncodedOnce(OnceLock<Bytes>);

impl EncodedOnce {
    /// The bytes, made by `encode` the first time (by one caller when
    /// several race; the others wait, and all get the same bytes).
    pub fn get_or_init(&self, encode: impl FnOnce() -> Bytes) -> &Bytes {
        self.0.get_or_init(encode)
    }

    /// Whether the bytes have been made.
    pub fn is_filled(&self) -> bool {
        self.0.get().is_some()
    }
}

impl Clone for EncodedOnce {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for EncodedOnce {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for EncodedOnce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.get() {
            Some(b) => write!(f, "EncodedOnce({} bytes)", b.len()),
            None => f.write_str("EncodedOnce(empty)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_once_and_a_clone_starts_empty() {
        let e = EncodedOnce::default();
        assert!(!e.is_filled());
        let first = e.get_or_init(|| Bytes::from_static(b"one")).clone();
        let again = e.get_or_init(|| Bytes::from_static(b"two")).clone();
        assert_eq!((&first[..], &again[..]), (&b"one"[..], &b"one"[..]));
        assert!(!e.clone().is_filled());
        assert_eq!(e, EncodedOnce::default());
    }
}
