//! The memory of tokens already used, so a notification is applied at most
//! once per token.

use std::{
    collections::{BTreeSet, HashMap},
    hash::{BuildHasher, RandomState},
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

/// Tokens already accepted, remembered until they expire, at most
/// `capacity` of them. Each is kept as a 64-bit keyed hash, so the memory
/// is about 50 bytes a token whatever its size.
pub struct SeenTokens {
    capacity: usize,
    hasher: RandomState,
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
            hasher: RandomState::new(),
            inner: Mutex::new(SeenInner::default()),
        }
    }

    /// Records `token`, usable until `forget_after` (Unix seconds), and
    /// says whether this is its first use. When the memory is full of
    /// tokens still usable, nothing is forgotten (that would open a replay
    /// window): the answer is `Full` and the caller refuses for now.
    pub fn first_use(&self, token: &str, forget_after: u64, now: SystemTime) -> Seen {
        let hash = self.hasher.hash_one(token);
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
        let hash = self.hasher.hash_one(token);
        let mut inner = self.inner.lock().expect("seen tokens lock");
        if let Some(exp) = inner.expiry.remove(&hash) {
            inner.by_expiry.remove(&(exp, hash));
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("seen tokens lock").expiry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
