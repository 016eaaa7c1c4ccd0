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

/// The record's cached encoding: the whole `WatchTenantResponse` of its
/// SNAPSHOT event (type, tenant, context identifier, revision) as prost
/// encodes it, made the first time any reply of the record is sent.
///
/// Every reply of a record reads one contiguous run of these bytes: a
/// SNAPSHOT event is all of them, a CHANGED event the same after its own
/// type field, and a lookup's answer the tenant field inside them. Before,
/// an event read the tenant's bytes, the identifier and the revision from
/// three places, and its length from a fourth; in a reconnect storm that
/// reading was over a third of a snapshot's CPU (BENCHMARKS.md, Storm).
pub(crate) fn snapshot_bytes(r: &TenantRecord) -> &Bytes {
    r.encoded.get_or_init(|| {
        Bytes::from(
            pb::WatchTenantResponse {
                r#type: pb::WatchEventType::Snapshot as i32,
                tenant: Some(tenant_to_pb(r)),
                context_identifier: r.context_identifier.to_string(),
                revision: r.revision,
            }
            .encode_to_vec(),
        )
    })
}

/// The length of the type field that starts the cached bytes: its key and
/// a one-byte value (every event type is below 128).
const TYPE_FIELD: usize = 2;

/// The key of the tenant field (2) in the cached bytes, and where its
/// length starts.
const TENANT_KEY: usize = TYPE_FIELD;
const TENANT_LEN: usize = TENANT_KEY + 1;

/// The tenant field of the cached bytes without its key: the length and
/// the `Tenant` message, as any message field holding it is written.
fn tenant_field(bytes: &[u8]) -> &[u8] {
    let mut rest = bytes.get(TENANT_LEN..).unwrap_or_default();
    let Ok(len) = encoding::decode_varint(&mut rest) else {
        return &[];
    };
    let end = bytes.len() - rest.len() + len as usize;
    bytes.get(TENANT_LEN..end).unwrap_or_default()
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

    /// The tenant field's length and message, read from the record's
    /// cached event.
    fn tenant(&self) -> Option<&[u8]> {
        self.record
            .as_deref()
            .map(|r| tenant_field(snapshot_bytes(r)))
    }
}

impl Message for TenantReply {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(field) = self.tenant() {
            encoding::encode_key(1, WireType::LengthDelimited, buf);
            buf.put_slice(field);
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
        self.tenant()
            .map_or(0, |field| encoding::key_len(1) + field.len())
    }

    fn clear(&mut self) {
        self.record = None;
    }
}

/// A `WatchTenantResponse`: a SNAPSHOT or CHANGED event is the record's
/// cached event (`snapshot_bytes`), with its own type. Holds the event's
/// record or identifier as they were (moved in, not cloned).
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

    /// The record's cached event, after its type field.
    fn after_type(&self) -> Option<&[u8]> {
        self.record
            .as_deref()
            .map(|r| snapshot_bytes(r).get(TYPE_FIELD..).unwrap_or_default())
    }

    fn type_len(&self) -> usize {
        if self.r#type != 0 {
            encoding::int32::encoded_len(1, &self.r#type)
        } else {
            0
        }
    }

    fn ctx(&self) -> &str {
        self.removed.as_ref().map_or("", |c| c.as_str())
    }
}

impl Message for WatchReply {
    /// In tag order, proto3 defaults left out: as prost encodes it.
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(r) = &self.record {
            let cached = snapshot_bytes(r);
            if self.r#type == pb::WatchEventType::Snapshot as i32 {
                buf.put_slice(cached);
            } else {
                encoding::int32::encode(1, &self.r#type, buf);
                buf.put_slice(cached.get(TYPE_FIELD..).unwrap_or_default());
            }
            return;
        }
        if self.r#type != 0 {
            encoding::int32::encode(1, &self.r#type, buf);
        }
        let ctx = self.ctx();
        if !ctx.is_empty() {
            encoding::encode_key(3, WireType::LengthDelimited, buf);
            encoding::encode_varint(ctx.len() as u64, buf);
            buf.put_slice(ctx.as_bytes());
        }
        if self.revision != 0 {
            encoding::uint64::encode(4, &self.revision, buf);
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
        if let Some(rest) = self.after_type() {
            return self.type_len() + rest.len();
        }
        let ctx = self.ctx();
        self.type_len()
            + if ctx.is_empty() {
                0
            } else {
                encoding::key_len(3) + encoding::encoded_len_varint(ctx.len() as u64) + ctx.len()
            }
            + match self.revision {
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
        // A tenant message of 16 KiB or more: its length takes three bytes,
        // which moves where the tenant's bytes start in the cached event.
        out.push(TenantRecord {
            last_error: "e".repeat(20_000),
            revision: 1,
            ..TenantRecord::unknown(&ctx("CustLongError"), now)
        });
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
            // Cached now, as the record's SNAPSHOT event; the answer's
            // tenant is read from inside those bytes, not a copy of them.
            assert!(r.encoded.is_filled());
            let cached = snapshot_bytes(&r);
            assert_eq!(
                pb::WatchTenantResponse::decode(&cached[..]).unwrap(),
                event_to_pb(WatchEvent::Snapshot(Arc::clone(&r)))
            );
            let field = ours.tenant().unwrap().as_ptr_range();
            assert!(cached.as_ptr_range().contains(&field.start));
            assert!(field.end <= cached.as_ptr_range().end);
        }
        assert_eq!(TenantReply::default().encode_to_vec(), Vec::<u8>::new());
        assert_eq!(TenantReply::default().encoded_len(), 0);
    }

    #[test]
    fn every_watch_event_is_what_prost_encodes() {
        for r in records() {
            // The cache is the SNAPSHOT event whichever reply fills it
            // first: then every event and answer is still prost's.
            for first in 0..3 {
                let r = Arc::new(r.clone());
                let _ = match first {
                    0 => WatchReply::new(WatchEvent::Changed(Arc::clone(&r))).encode_to_vec(),
                    1 => TenantReply::new(Arc::clone(&r)).encode_to_vec(),
                    _ => WatchReply::new(WatchEvent::Snapshot(Arc::clone(&r))).encode_to_vec(),
                };
                assert!(r.encoded.is_filled());
                assert_eq!(
                    TenantReply::new(Arc::clone(&r)).encode_to_vec(),
                    pb::GetTenantStateResponse {
                        tenant: Some(tenant_to_pb(&r))
                    }
                    .encode_to_vec()
                );
                for e in [
                    WatchEvent::Snapshot(Arc::clone(&r)),
                    WatchEvent::Changed(Arc::clone(&r)),
                ] {
                    let ours = WatchReply::new(e.clone());
                    let prost = event_to_pb(e.clone());
                    assert_eq!(ours.encode_to_vec(), prost.encode_to_vec(), "{e:?}");
                    assert_eq!(ours.encoded_len(), prost.encoded_len(), "{e:?}");
                }
            }
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
