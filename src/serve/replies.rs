//! Encode once: the replies that carry a tenant send the record's cached
//! encoding (`core::encoded`) instead of building and encoding a protobuf
//! `Tenant` for every answer and every watch event.
//!
//! `TenantReply` and `WatchReply` stand in, on the server side only, for
//! `GetTenantStateResponse` and `WatchTenantResponse` (build.rs generates
//! the server a second time with these in their place). They implement
//! `prost::Message` by writing the bytes prost itself would write: the
//! wire is unchanged, and tests compare it byte for byte. Clients,
//! reflection and grpcurl see the same messages as before.

use std::sync::Arc;

use bytes::{BufMut, Bytes};
use prost::{
    Message,
    encoding::{self, DecodeContext, WireType},
};

use crate::{
    core::tenant::{ContextId, TenantRecord},
    core::watch::WatchEvent,
    pb,
    serve::grpc::tenant_to_pb,
};

/// The record's `Tenant` message, encoded the first time it is asked for;
/// every later answer and event of the record writes the same bytes.
pub(crate) fn tenant_bytes(r: &TenantRecord) -> &Bytes {
    r.encoded
        .get_or_init(|| Bytes::from(tenant_to_pb(r).encode_to_vec()))
}

/// Writes a length-delimited field `tag` holding `bytes`, as prost writes
/// a present message field.
fn put_message(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    encoding::encode_key(tag, WireType::LengthDelimited, buf);
    encoding::encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

fn message_len(tag: u32, len: usize) -> usize {
    encoding::key_len(tag) + encoding::encoded_len_varint(len as u64) + len
}

/// `GetTenantStateResponse { tenant: Some(..) }` from the cached bytes.
///
/// Holds the record itself, not a copy of anything: the lookup's `Arc`
/// moves in, and the bytes are read in place when tonic encodes (cloning
/// `Bytes` and identifiers for every reply cost atomic increments on
/// cache lines both cores share).
#[derive(Debug, Default, Clone)]
pub struct TenantReply {
    record: Option<Arc<TenantRecord>>,
}

impl TenantReply {
    pub fn new(record: Arc<TenantRecord>) -> Self {
        Self {
            record: Some(record),
        }
    }

    fn tenant(&self) -> &[u8] {
        self.record.as_deref().map_or(&[], |r| tenant_bytes(r))
    }
}

impl Message for TenantReply {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_message(1, self.tenant(), buf);
    }

    /// Server-side only: never decoded; anything read is skipped.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        message_len(1, self.tenant().len())
    }

    fn clear(&mut self) {
        self.record = None;
    }
}

/// A `WatchTenantResponse`, its tenant (if any) from the cached bytes.
/// Holds the event's record or identifier as they were (moved in, not
/// cloned), and reads the bytes, identifier and revision from them.
#[derive(Debug, Default, Clone)]
pub struct WatchReply {
    r#type: i32,
    record: Option<Arc<TenantRecord>>,
    /// A removed tenant's identifier.
    removed: Option<ContextId>,
    /// The revision of a marker (the record's own otherwise).
    revision: u64,
}

impl WatchReply {
    /// The reply for `e`; CLOSING and DETACHED end the stream with a status
    /// instead, and map to an UNSPECIFIED event that is never sent.
    pub fn new(e: WatchEvent) -> Self {
        use pb::WatchEventType as T;
        let tenant = |t: T, r: Arc<TenantRecord>| Self {
            r#type: t as i32,
            record: Some(r),
            removed: None,
            revision: 0,
        };
        let marker = |t: T, removed: Option<ContextId>, revision: u64| Self {
            r#type: t as i32,
            record: None,
            removed,
            revision,
        };
        match e {
            WatchEvent::Snapshot(r) => tenant(T::Snapshot, r),
            WatchEvent::Changed(r) => tenant(T::Changed, r),
            WatchEvent::Reset => marker(T::Reset, None, 0),
            WatchEvent::Synced(rev) => marker(T::Synced, None, rev),
            WatchEvent::Heartbeat(rev) => marker(T::Heartbeat, None, rev),
            WatchEvent::Removed(ctx, rev) => marker(T::Removed, Some(ctx), rev),
            WatchEvent::Closing | WatchEvent::Detached | WatchEvent::Refused(_) => {
                marker(T::Unspecified, None, 0)
            }
        }
    }

    fn tenant(&self) -> Option<&Bytes> {
        self.record.as_deref().map(tenant_bytes)
    }

    fn ctx(&self) -> &str {
        match (&self.record, &self.removed) {
            (Some(r), _) => r.context_identifier.as_str(),
            (None, Some(c)) => c.as_str(),
            (None, None) => "",
        }
    }

    fn revision(&self) -> u64 {
        self.record.as_ref().map_or(self.revision, |r| r.revision)
    }
}

impl Message for WatchReply {
    /// In tag order, proto3 defaults left out: as prost encodes it.
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if self.r#type != 0 {
            encoding::int32::encode(1, &self.r#type, buf);
        }
        if let Some(t) = self.tenant() {
            put_message(2, t, buf);
        }
        let ctx = self.ctx();
        if !ctx.is_empty() {
            encoding::encode_key(3, WireType::LengthDelimited, buf);
            encoding::encode_varint(ctx.len() as u64, buf);
            buf.put_slice(ctx.as_bytes());
        }
        let revision = self.revision();
        if revision != 0 {
            encoding::uint64::encode(4, &revision, buf);
        }
    }

    /// Server-side only: never decoded; anything read is skipped.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let ctx = self.ctx();
        (if self.r#type != 0 {
            encoding::int32::encoded_len(1, &self.r#type)
        } else {
            0
        }) + self.tenant().map_or(0, |t| message_len(2, t.len()))
            + if ctx.is_empty() {
                0
            } else {
                message_len(3, ctx.len())
            }
            + match self.revision() {
                0 => 0,
                revision => encoding::uint64::encoded_len(4, &revision),
            }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::Arc,
        time::{Duration, SystemTime},
    };

    use super::*;
    use crate::{
        core::store::{PollResult, Store},
        core::tenant::{
            ChangeSource, ChangeType, Hold, NotificationInfo, Observation, TenantState,
        },
        serve::grpc::event_to_pb,
    };

    fn ctx(s: &str) -> ContextId {
        ContextId::parse(s).unwrap()
    }

    /// Records with every field empty, set, or at an edge (a time before
    /// 1970 has negative seconds), in every state.
    fn records() -> Vec<TenantRecord> {
        let now = SystemTime::now();
        let mut out = vec![TenantRecord::unknown(&ctx("C"), SystemTime::UNIX_EPOCH)];
        for (i, state) in TenantState::ALL.into_iter().enumerate() {
            let full = TenantRecord {
                state,
                endpoint: format!("https://sod{i}.superoffice.com/Cust{i}"),
                api: format!("https://sod{i}.superoffice.com/Cust{i}/api"),
                version: "Release_11.10_2026.02.24-02".into(),
                valid_until: Some(now + Duration::from_secs(3600)),
                revision: 1_795_425_098_078_360 + i as u64,
                source: ChangeSource::Notification,
                last_notification: Some(NotificationInfo {
                    change_type: ChangeType::Move,
                    version_name: "11.10".into(),
                    file_version: String::new(),
                    public_endpoint: "sod3.superoffice.com".into(),
                    received_at: now,
                }),
                stale: i % 2 == 0,
                last_error: if i % 3 == 0 {
                    "timed out".into()
                } else {
                    String::new()
                },
                hold: Some(Hold {
                    until: SystemTime::UNIX_EPOCH - Duration::from_millis(1500),
                    prior_state: TenantState::Running,
                    prior_endpoint: String::new(),
                }),
                ..TenantRecord::unknown(&ctx(&format!("Cust{i}")), now)
            };
            out.push(full);
        }
        out
    }

    #[test]
    fn a_tenant_reply_is_what_prost_encodes() {
        for r in records() {
            let r = Arc::new(r);
            let ours = TenantReply::new(Arc::clone(&r));
            let prost = pb::GetTenantStateResponse {
                tenant: Some(tenant_to_pb(&r)),
            };
            assert_eq!(ours.encode_to_vec(), prost.encode_to_vec(), "{r:?}");
            assert_eq!(ours.encoded_len(), prost.encoded_len());
            // Cached now: the same bytes again, shared.
            assert!(r.encoded.is_filled());
            assert_eq!(tenant_bytes(&r).as_ptr(), ours.tenant().as_ptr());
        }
    }

    #[test]
    fn every_watch_event_is_what_prost_encodes() {
        for r in records() {
            let r = Arc::new(r);
            let events = [
                WatchEvent::Reset,
                WatchEvent::Snapshot(Arc::clone(&r)),
                WatchEvent::Synced(0),
                WatchEvent::Synced(r.revision),
                WatchEvent::Changed(Arc::clone(&r)),
                WatchEvent::Removed(r.context_identifier.clone(), r.revision),
                WatchEvent::Heartbeat(0),
                WatchEvent::Heartbeat(u64::MAX),
                WatchEvent::Closing,
                WatchEvent::Detached,
            ];
            for e in events {
                let ours = WatchReply::new(e.clone());
                let prost = event_to_pb(e.clone());
                assert_eq!(ours.encode_to_vec(), prost.encode_to_vec(), "{e:?}");
                assert_eq!(ours.encoded_len(), prost.encoded_len(), "{e:?}");
            }
        }
    }

    /// A record changed after it was sent is a new record: its bytes are
    /// made again, never the old ones.
    #[test]
    fn a_changed_record_is_encoded_again() {
        let store = Store::new();
        let c = ctx("Cust7");
        let observe = |endpoint: &str| {
            PollResult::Observed(Observation {
                state: TenantState::Running,
                endpoint: endpoint.into(),
                api: String::new(),
                version: String::new(),
                valid_until: None,
            })
        };
        store.apply_poll(&c, observe("https://one"), SystemTime::now());
        let first = store.get(&c).unwrap();
        let sent = TenantReply::new(first).encode_to_vec();
        // Changed, and refreshed (same revision, new observed_at).
        store.apply_poll(&c, observe("https://two"), SystemTime::now());
        let second = store.get(&c).unwrap();
        assert!(!second.encoded.is_filled());
        let again = TenantReply::new(Arc::clone(&second)).encode_to_vec();
        assert_ne!(sent, again);
        let decoded = pb::GetTenantStateResponse::decode(&again[..]).unwrap();
        assert_eq!(decoded.tenant.unwrap().endpoint, "https://two");
        // A copy made to change a sent record starts without its bytes.
        let copy = TenantRecord {
            stale: true,
            ..TenantRecord::clone(&second)
        };
        assert_eq!(
            TenantReply::new(Arc::new(copy.clone())).encode_to_vec(),
            pb::GetTenantStateResponse {
                tenant: Some(tenant_to_pb(&copy))
            }
            .encode_to_vec()
        );
    }
}
