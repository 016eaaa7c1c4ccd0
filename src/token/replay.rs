//! The memory of tokens already used, so a notification is applied at most
//! once per token, and a retry is not mistaken for a replay.
//!
//! A token is an idempotency key, as payment APIs use them: what it carried
//! (the notification's fingerprint) and whether that was applied are kept
//! with it. The same notification sent again with the same token is a
//! retry (SuperOffice, or a sender that gave up waiting): applied once,
//! answered as the first time. The token with another notification is a
//! replay and refused.
//!
//! It outlives the process where records do: with `--state-file`, each
//! applied token's digest is journaled with its notification and saved with
//! the records (`persist`), and restored at start.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
    time::SystemTime,
};

use super::unix_seconds;

/// One use of a token: which token (its digest), what it carried (the
/// notification's fingerprint, `note_digest`), and until when it must be
/// remembered (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenUse {
    pub digest: u64,
    /// 0: not known (kept by a build that did not record it); matches any
    /// notification.
    pub note: u64,
    pub forget_after: u64,
}

/// What a use of a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Never seen: go ahead; the notification is received at this time.
    First(SystemTime),
    /// The same notification was received with this token before but is
    /// not applied (its first attempt failed or is still under way): apply
    /// it, as received at the first attempt's time, so that applying it
    /// twice is applying it once.
    Retry(SystemTime),
    /// The same notification, applied already: answer as the first time
    /// was answered, apply nothing.
    Applied,
    /// The token was used for another notification.
    Replay,
    /// The memory is full of tokens still usable.
    Full,
}

/// A token's digest as the memory keeps it: the first 64 bits of its
/// SHA-256. The same in every process, so it can be saved and restored;
/// only tokens that verified are ever remembered, so nobody can choose
/// digests to collide with.
pub fn token_digest(token: &str) -> u64 {
    digest64(&[token.as_bytes()])
}

/// The first 64 bits of the SHA-256 of `parts`, each ended by a NUL (so
/// ("ab", "c") and ("a", "bc") differ). Never 0, which `TokenUse::note`
/// keeps for "not known".
pub fn digest64(parts: &[&[u8]]) -> u64 {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    if let [only] = parts {
        // One part: the plain digest, as token digests were always kept.
        ctx.update(only);
    } else {
        for p in parts {
            ctx.update(p);
            ctx.update(&[0]);
        }
    }
    let d = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(first).max(1)
}

/// A token remembered, as the state file and the journal keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remembered {
    pub digest: u64,
    pub forget_after: u64,
    /// 0: not known.
    pub note: u64,
}

/// Tokens received, remembered until they expire, at most `capacity` of
/// them. Each is kept as a few 64-bit numbers, about 80 bytes a token
/// whatever its size.
pub struct SeenTokens {
    capacity: usize,
    inner: Mutex<SeenInner>,
}

struct Used {
    forget_after: u64,
    note: u64,
    /// When its notification was first received.
    received_at: SystemTime,
    applied: bool,
}

#[derive(Default)]
struct SeenInner {
    used: HashMap<u64, Used>,
    by_expiry: BTreeSet<(u64, u64)>,
}

impl SeenInner {
    fn expire(&mut self, now: u64) {
        while let Some(&(exp, h)) = self.by_expiry.first() {
            if exp >= now {
                break;
            }
            self.by_expiry.pop_first();
            self.used.remove(&h);
        }
    }
}

impl SeenTokens {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(SeenInner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SeenInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a use of a token at `now` and says what it is (see `Seen`).
    /// When the memory is full of tokens still usable, nothing is forgotten
    /// (that would open a replay window): the answer is `Full` and the
    /// caller refuses for now.
    pub fn first_use(&self, token: TokenUse, now: SystemTime) -> Seen {
        let mut inner = self.lock();
        inner.expire(unix_seconds(now));
        if let Some(u) = inner.used.get(&token.digest) {
            return if u.note != 0 && token.note != 0 && u.note != token.note {
                Seen::Replay
            } else if u.applied {
                Seen::Applied
            } else {
                Seen::Retry(u.received_at)
            };
        }
        if inner.used.len() >= self.capacity {
            return Seen::Full;
        }
        inner.used.insert(
            token.digest,
            Used {
                forget_after: token.forget_after,
                note: token.note,
                received_at: now,
                applied: false,
            },
        );
        inner.by_expiry.insert((token.forget_after, token.digest));
        Seen::First(now)
    }

    /// Marks the token's notification applied: from now on its retries
    /// are answered without applying anything, and it is saved.
    pub fn applied(&self, digest: u64) {
        if let Some(u) = self.lock().used.get_mut(&digest) {
            u.applied = true;
        }
    }

    /// Every token whose notification was applied and that is still usable
    /// at `now`, for the state file. A token still pending is left out: its
    /// notification is not applied, so a retry after a restart is welcome.
    pub fn remembered(&self, now: SystemTime) -> Vec<Remembered> {
        let now = unix_seconds(now);
        let inner = self.lock();
        inner
            .by_expiry
            .iter()
            .filter(|(exp, _)| *exp >= now)
            .filter_map(|&(exp, digest)| {
                let u = inner.used.get(&digest)?;
                u.applied.then_some(Remembered {
                    digest,
                    forget_after: exp,
                    note: u.note,
                })
            })
            .collect()
    }

    /// Remembers tokens a previous process applied (from the state file
    /// and the journal); those expired by `now` are left out, and none past
    /// the capacity. Returns how many were restored.
    pub fn restore(&self, tokens: impl IntoIterator<Item = Remembered>, now: SystemTime) -> usize {
        let now_secs = unix_seconds(now);
        let mut inner = self.lock();
        let mut restored = 0;
        for t in tokens {
            if t.forget_after < now_secs || inner.used.len() >= self.capacity {
                continue;
            }
            let mut used = Used {
                forget_after: t.forget_after,
                note: t.note,
                received_at: now,
                applied: true,
            };
            match inner.used.remove(&t.digest) {
                Some(old) => {
                    inner.by_expiry.remove(&(old.forget_after, t.digest));
                    if used.note == 0 {
                        used.note = old.note;
                    }
                }
                None => restored += 1,
            }
            inner.used.insert(t.digest, used);
            inner.by_expiry.insert((t.forget_after, t.digest));
        }
        restored
    }

    pub fn len(&self) -> usize {
        self.lock().used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
