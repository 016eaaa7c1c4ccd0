//! The `tokens` bucket: a notification token's claim, taken before its
//! notification is applied and marked applied after, so that a token is
//! applied once fleet-wide and its retry on any replica is recognised
//! (see `Ledger::claim_token`).

use std::time::{Duration, UNIX_EPOCH};

use async_nats::jetstream::kv;
use bytes::Bytes;

use super::{MAX_ATTEMPTS, SharedLedger};
use crate::{
    codec,
    core::ledger::{Claimed, TokenClaim, WriteError},
};

impl SharedLedger {
    pub(super) fn token_key(digest: u64) -> String {
        format!("{digest:016x}")
    }

    /// Records that the claimed token's notification is applied.
    pub(super) async fn token_applied(&self, claim: TokenClaim) -> Result<(), WriteError> {
        let applied = TokenValue {
            applied: true,
            by: self.replica.clone(),
            ..TokenValue::of(&claim)
        };
        self.tokens
            .put(Self::token_key(claim.digest), applied.encode())
            .await
            .map(|_| ())
            .map_err(|e| {
                self.unavailable(format!(
                    "cannot record the token's notification as applied: {e}"
                ))
            })
    }

    /// The claim on a token (see `Ledger::claim_token`): create the key as
    /// pending; if it exists, the same notification applied is `Applied`,
    /// another notification is `Replay`, and the same one still pending (its
    /// first attempt failed, timed out, or is under way) is taken over with
    /// compare-and-set, keeping the first attempt's time of receipt. A
    /// failed or timed-out write is read back: if the key holds exactly
    /// what this attempt wrote, the claim is this one's.
    pub(super) async fn claim(&self, claim: TokenClaim) -> Result<Claimed, WriteError> {
        let key = Self::token_key(claim.digest);
        let nonce: u64 = rand::random();
        let mine = TokenValue {
            by: format!("{}/{nonce:016x}", self.replica),
            ..TokenValue::of(&claim)
        };
        let mine_bytes = mine.encode();
        let mut failure = None;
        for _ in 0..MAX_ATTEMPTS {
            match self.tokens.create(&key, mine_bytes.clone()).await {
                Ok(_) => return Ok(Claimed::Mine(claim.received_at)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                // Perhaps written: read back below.
                Err(e) => failure = Some(e.to_string()),
            }
            let entry = self.tokens.entry(&key).await.map_err(|e| {
                self.unavailable(format!(
                    "cannot claim the token's use: {}; nor read the claim back: {e}",
                    failure.as_deref().unwrap_or("it is claimed")
                ))
            })?;
            let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
                if let Some(f) = failure {
                    return Err(self.unavailable(format!("cannot claim the token's use: {f}")));
                }
                // Given back or expired in between: claim it again.
                continue;
            };
            if entry.value == mine_bytes {
                return Ok(Claimed::Mine(claim.received_at));
            }
            let held = TokenValue::decode(&entry.value);
            if held.note != 0 && claim.note != 0 && held.note != claim.note {
                return Ok(Claimed::Replay);
            }
            if held.applied {
                return Ok(Claimed::Applied);
            }
            // Pending: take it over, as received the first time.
            let first = UNIX_EPOCH + Duration::from_millis(held.received_at);
            let takeover = TokenValue {
                received_at: held.received_at,
                ..mine.clone()
            };
            let takeover_bytes = takeover.encode();
            match self
                .tokens
                .update(&key, takeover_bytes.clone(), entry.revision)
                .await
            {
                Ok(_) => return Ok(Claimed::Mine(first)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    failure = None;
                }
                Err(e) => {
                    if let Ok(Some(now)) = self.tokens.entry(&key).await
                        && now.value == takeover_bytes
                    {
                        return Ok(Claimed::Mine(first));
                    }
                    return Err(self.unavailable(format!("cannot claim the token's use: {e}")));
                }
            }
        }
        Err(self.unavailable("cannot claim the token's use: other attempts kept taking it"))
    }
}

/// A token's claim as the `tokens` bucket keeps it: JSON, so a claim is
/// read the same by every replica.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct TokenValue {
    /// Until when it must be remembered (Unix seconds).
    #[serde(rename = "f")]
    forget_after: u64,
    /// The notification's fingerprint.
    #[serde(rename = "n")]
    note: u64,
    /// When the notification was first received (Unix milliseconds).
    #[serde(rename = "r")]
    received_at: u64,
    /// Whether the notification is applied (else the claim is pending).
    #[serde(rename = "a")]
    applied: bool,
    /// Which replica (and attempt) wrote it, so a write whose answer was
    /// lost can be recognised.
    by: String,
}

impl TokenValue {
    fn of(claim: &TokenClaim) -> Self {
        Self {
            forget_after: claim.forget_after,
            note: claim.note,
            received_at: codec::millis(claim.received_at),
            applied: false,
            by: String::new(),
        }
    }

    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// A value this build cannot read was written by one that kept only
    /// the time to forget it, once its notification was applied.
    fn decode(bytes: &[u8]) -> Self {
        serde_json::from_slice(bytes).unwrap_or(Self {
            forget_after: 0,
            note: 0,
            received_at: 0,
            applied: true,
            by: String::new(),
        })
    }
}
