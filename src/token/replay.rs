//! The memory of tokens already used, so a notification is applied at most
//! once per token. It outlives the process where records do: with
//! `--state-file`, each accepted token's digest is journaled with its
//! notification and saved with the records (`persist`), and restored at
//! start.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
    time::SystemTime,
};

use super::unix_seconds;

/// Whether a token was seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    First,
    Replay,
    /// The memory is full of tokens still usable.
    Full,
}

/// A token's digest as the memory keeps it: the first 64 bits of its
/// SHA-256. The same in every process, so it can be saved and restored;
/// only tokens that verified are ever remembered, so nobody can choose
/// digests to collide with.
pub fn token_digest(token: &str) -> u64 {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// Tokens already accepted, remembered until they expire, at most
/// `capacity` of them. Each is kept as a 64-bit digest, so the memory is
/// about 50 bytes a token whatever its size.
pub struct SeenTokens {
    capacity: usize,
    inner: Mutex<SeenInner>,
}

#[derive(Default)]
struct SeenInner {
    expiry: HashMap<u64, u64>,
    by_expiry: BTreeSet<(u64, u64)>,
}

impl SeenTokens {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(SeenInner::default()),
        }
    }

    /// Records `token`, usable until `forget_after` (Unix seconds), and
    /// says whether this is its first use. When the memory is full of
    /// tokens still usable, nothing is forgotten (that would open a replay
    /// window): the answer is `Full` and the caller refuses for now.
    pub fn first_use(&self, token: &str, forget_after: u64, now: SystemTime) -> Seen {
        let hash = token_digest(token);
        let now = unix_seconds(now);
        let mut inner = self.inner.lock().expect("seen tokens lock");
        while let Some(&(exp, h)) = inner.by_expiry.first() {
            if exp >= now {
                break;
            }
            inner.by_expiry.pop_first();
            inner.expiry.remove(&h);
        }
        if inner.expiry.contains_key(&hash) {
            return Seen::Replay;
        }
        if inner.expiry.len() >= self.capacity {
            return Seen::Full;
        }
        inner.expiry.insert(hash, forget_after);
        inner.by_expiry.insert((forget_after, hash));
        Seen::First
    }

    /// Forgets `token`: it was recorded but its notification could not be
    /// kept, so SuperOffice's retry must not be refused as a replay.
    pub fn forget(&self, token: &str) {
        let hash = token_digest(token);
        let mut inner = self.inner.lock().expect("seen tokens lock");
        if let Some(exp) = inner.expiry.remove(&hash) {
            inner.by_expiry.remove(&(exp, hash));
        }
    }

    /// Every token remembered and still usable at `now`, as (digest,
    /// forget after), for the state file.
    pub fn remembered(&self, now: SystemTime) -> Vec<(u64, u64)> {
        let now = unix_seconds(now);
        let inner = self.inner.lock().expect("seen tokens lock");
        inner
            .by_expiry
            .iter()
            .filter(|(exp, _)| *exp >= now)
            .map(|&(exp, hash)| (hash, exp))
            .collect()
    }

    /// Remembers tokens a previous process accepted (from the state file
    /// and the journal); those expired by `now` are left out, and none past
    /// the capacity. Returns how many were restored.
    pub fn restore(&self, tokens: impl IntoIterator<Item = (u64, u64)>, now: SystemTime) -> usize {
        let now = unix_seconds(now);
        let mut inner = self.inner.lock().expect("seen tokens lock");
        let mut restored = 0;
        for (hash, forget_after) in tokens {
            if forget_after < now || inner.expiry.len() >= self.capacity {
                continue;
            }
            if let Some(old) = inner.expiry.insert(hash, forget_after) {
                inner.by_expiry.remove(&(old, hash));
            } else {
                restored += 1;
            }
            inner.by_expiry.insert((forget_after, hash));
        }
        restored
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("seen tokens lock").expiry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
