//! The gRPC layer: maps requests to the core and records to protobuf (the
//! generated types are `crate::pb`'s). The only server module, with the
//! reply encoders, that knows protobuf types.

use std::{
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::{
    core::backend::{LookupError, Tenants},
    core::tenant::{ChangeSource, ChangeType, ContextId, TenantRecord, TenantState},
    core::watch::WatchEvent,
    files::BearerTokens,
    metrics::{Metrics, RpcHandles},
};

use crate::pb::{
    self,
    reply_server::tenant_status_service_server::{TenantStatusService, TenantStatusServiceServer},
};

use crate::serve::replies::{TenantReply, WatchReply};

/// The most tenants one WatchTenant call may name.
pub const MAX_WATCHED_NAMES: usize = 1000;
/// The most WatchTenant streams open at once unless `--max-watchers` says
/// otherwise: about 600 MiB of streams.
pub const DEFAULT_MAX_WATCHERS: usize = 100_000;
/// The largest request message unless `--grpc-max-request-size` says
/// otherwise.
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 256 * 1024;
/// ListTenants' page size when the request gives none, and its largest.
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

/// Implements `tenantstatus.v1.TenantStatusService` over any backend of
/// tenant records.
pub struct GrpcService<B> {
    tenants: Arc<B>,
    heartbeat: Duration,
    metrics: Arc<Metrics>,
    access: Option<Arc<BearerTokens>>,
    /// One permit per open WatchTenant stream (`--max-watchers`).
    watchers: Arc<tokio::sync::Semaphore>,
    max_watchers: usize,
    max_request_size: usize,
    /// Each method's metric series, resolved once.
    rpc: Rpcs,
}

struct Rpcs {
    get: RpcHandles,
    watch: RpcHandles,
    list: RpcHandles,
}

impl<B: Tenants> GrpcService<B> {
    pub fn new(
        tenants: Arc<B>,
        heartbeat: Duration,
        metrics: Arc<Metrics>,
        access: Option<Arc<BearerTokens>>,
    ) -> Self {
        let rpc = Rpcs {
            get: metrics.rpc_handles("GetTenantState"),
            watch: metrics.rpc_handles("WatchTenant"),
            list: metrics.rpc_handles("ListTenants"),
        };
        Self {
            rpc,
            tenants,
            heartbeat,
            metrics,
            access,
            watchers: Arc::new(tokio::sync::Semaphore::new(DEFAULT_MAX_WATCHERS)),
            max_watchers: DEFAULT_MAX_WATCHERS,
            max_request_size: DEFAULT_MAX_REQUEST_SIZE,
        }
    }

    /// At most `max_watchers` WatchTenant streams open at once; past it,
    /// RESOURCE_EXHAUSTED. Requests over `max_request_size` bytes get
    /// OUT_OF_RANGE (tonic's own check).
    pub fn with_limits(mut self, max_watchers: usize, max_request_size: usize) -> Self {
        let max_watchers = max_watchers.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        self.watchers = Arc::new(tokio::sync::Semaphore::new(max_watchers));
        self.max_watchers = max_watchers;
        self.max_request_size = max_request_size;
        self
    }

    /// With `--grpc-token-file`, a call must carry `authorization: Bearer
    /// <token>`. Health and reflection are other services and stay open.
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(access) = &self.access else {
            return Ok(());
        };
        let Some(value) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "this service requires the header authorization: Bearer <token>",
            ));
        };
        let presented = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .or_else(|| value.as_bytes().strip_prefix(b"bearer "));
        match presented {
            Some(token) if access.accepts(token) => Ok(()),
            Some(_) => Err(Status::unauthenticated("the bearer token is not accepted")),
            None => Err(Status::unauthenticated(
                "the authorization header must be: Bearer <token>",
            )),
        }
    }

    /// Runs `handler` if `allowed`, and counts the call with its status
    /// code and time (for WatchTenant: the time to open the stream).
    async fn call<T>(
        &self,
        rpc: &RpcHandles,
        allowed: Result<(), Status>,
        handler: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let result = match allowed {
            Ok(()) => handler.await,
            Err(e) => Err(e),
        };
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.metrics
            .rpc_with(rpc, crate::pb::code_name(code), started.elapsed());
        result
    }

    pub fn into_server(self) -> TenantStatusServiceServer<Self> {
        let max = self.max_request_size;
        TenantStatusServiceServer::new(self).max_decoding_message_size(max)
    }
}

fn parse_ctx(field: &str, raw: &str) -> Result<ContextId, Status> {
    ContextId::parse(raw)
        .map_err(|e| Status::invalid_argument(format!("{field} is not valid: {e}")))
}

fn lookup_status(e: LookupError) -> Status {
    match e {
        LookupError::NotFound(_) => Status::not_found(e.to_string()),
        LookupError::Unavailable(..) => Status::unavailable(e.to_string()),
        LookupError::TooManyUnknown(_) => Status::resource_exhausted(e.to_string()),
        LookupError::NotSynced(_) => Status::unavailable(e.to_string()),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchReply, Status>> + Send>>;

#[tonic::async_trait]
impl<B: Tenants> TenantStatusService for GrpcService<B> {
    async fn get_tenant_state(
        &self,
        request: Request<pb::GetTenantStateRequest>,
    ) -> Result<Response<TenantReply>, Status> {
        let allowed = self.authorize(&request);
        self.call(&self.rpc.get, allowed, self.get(request)).await
    }

    type WatchTenantStream = WatchStream;

    async fn watch_tenant(
        &self,
        request: Request<pb::WatchTenantRequest>,
    ) -> Result<Response<Self::WatchTenantStream>, Status> {
        let allowed = self.authorize(&request);
        self.call(&self.rpc.watch, allowed, self.watch(request))
            .await
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let allowed = self.authorize(&request);
        self.call(&self.rpc.list, allowed, async { self.list(request) })
            .await
    }
}

impl<B: Tenants> GrpcService<B> {
    // The calls' spans are DEBUG: at the default INFO filter a span per call
    // (made, its field formatted, closed) is a cost Health/Check does not
    // pay, and nothing inside a call logs at INFO or above.
    #[tracing::instrument(name = "GetTenantState", level = "debug", skip_all, fields(tenant = tracing::field::Empty))]
    async fn get(
        &self,
        request: Request<pb::GetTenantStateRequest>,
    ) -> Result<Response<TenantReply>, Status> {
        let ctx = parse_ctx("context_identifier", &request.get_ref().context_identifier)?;
        // Recorded only once valid: raw input never reaches a log line.
        tracing::Span::current().record("tenant", ctx.as_str());
        let record = self.tenants.lookup(&ctx).await.map_err(lookup_status)?;
        Ok(Response::new(TenantReply::new(record)))
    }

    #[tracing::instrument(name = "WatchTenant", level = "debug", skip_all, fields(tenants = tracing::field::Empty))]
    async fn watch(
        &self,
        request: Request<pb::WatchTenantRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let req = request.into_inner();
        if req.context_identifiers.len() > MAX_WATCHED_NAMES {
            return Err(Status::invalid_argument(format!(
                "context_identifiers names {} tenants; at most {MAX_WATCHED_NAMES} may be watched by name in one call (an empty list watches all)",
                req.context_identifiers.len()
            )));
        }
        let names = req
            .context_identifiers
            .iter()
            .map(|raw| parse_ctx("context_identifiers", raw))
            .collect::<Result<Vec<_>, _>>()?;
        tracing::Span::current().record("tenants", names.len());
        tracing::debug!(since = req.since_revision, "watch opened");
        // Held for as long as the stream lives.
        let permit = Arc::clone(&self.watchers)
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "{} WatchTenant streams are open, the most this server allows (--max-watchers); retry later, or watch several tenants on one stream",
                    self.max_watchers
                ))
            })?;
        self.tenants
            .synced(req.since_revision)
            .await
            .map_err(lookup_status)?;
        let open = self.metrics.stream_opened();
        let metrics = Arc::clone(&self.metrics);
        let stream = self.tenants.watch(names, req.since_revision, self.heartbeat).map(
            move |event| {
                // Counted open, and holding its permit, for as long as the
                // stream lives.
                let _open = (&open, &permit);
                match event {
                    WatchEvent::Closing => Err(Status::unavailable(
                        "tenant-status is shutting down; reconnect with since_revision set to the last revision seen",
                    )),
                    WatchEvent::Detached => Err(Status::unavailable(
                        "this replica has lost its connection to the shared store (NATS); reconnect, to another replica, with since_revision set to the last revision seen",
                    )),
                    WatchEvent::Refused(e) => Err(lookup_status(e)),
                    other => {
                        metrics.event_sent();
                        Ok(WatchReply::new(other))
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(name = "ListTenants", level = "debug", skip_all)]
    fn list(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let req = request.into_inner();
        let page_size = match req.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        if !req.page_token.is_empty() {
            ContextId::parse(&req.page_token).map_err(|_| {
                Status::invalid_argument("page_token is not one this server issued; pass the next_page_token of the previous page, or an empty one to start")
            })?;
        }
        let states = req
            .states
            .iter()
            .map(|n| {
                TenantState::from_number(i64::from(*n)).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "states holds {n}, which is not a TenantState"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let page = self.tenants.list(&req.page_token, &states, page_size);
        let next_page_token = match (page.more, page.tenants.last()) {
            (true, Some(last)) => last.context_identifier.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: page.tenants.iter().map(|r| tenant_to_pb(r)).collect(),
            next_page_token,
            revision: page.revision,
        }))
    }
}

fn state_to_pb(s: TenantState) -> pb::TenantState {
    match s {
        TenantState::Unknown => pb::TenantState::Unknown,
        TenantState::Provisioning => pb::TenantState::Provisioning,
        TenantState::Running => pb::TenantState::Running,
        TenantState::Deleted => pb::TenantState::Deleted,
        TenantState::Suspended => pb::TenantState::Suspended,
        TenantState::OnlineMaintenance => pb::TenantState::OnlineMaintenance,
        TenantState::OfflineMaintenance => pb::TenantState::OfflineMaintenance,
        TenantState::ProvisioningFailed => pb::TenantState::ProvisioningFailed,
        TenantState::Deleting => pb::TenantState::Deleting,
        TenantState::DeleteFailed => pb::TenantState::DeleteFailed,
        TenantState::MigrationPending => pb::TenantState::MigrationPending,
    }
}

fn change_type_to_pb(c: ChangeType) -> pb::ChangeType {
    match c {
        ChangeType::Upgrade => pb::ChangeType::Upgrade,
        ChangeType::BackupRestored => pb::ChangeType::BackupRestored,
        ChangeType::Suspend => pb::ChangeType::Suspend,
        ChangeType::Resume => pb::ChangeType::Resume,
        ChangeType::Delete => pb::ChangeType::Delete,
        ChangeType::Move => pb::ChangeType::Move,
    }
}

/// A record as the proto carries it.
pub fn tenant_to_pb(r: &TenantRecord) -> pb::Tenant {
    pb::Tenant {
        context_identifier: r.context_identifier.to_string(),
        state: state_to_pb(r.state) as i32,
        is_running: r.is_running(),
        endpoint: r.endpoint.clone(),
        api: r.api.clone(),
        version: r.version.clone(),
        valid_until: r.valid_until.map(Into::into),
        observed_at: Some(r.observed_at.into()),
        revision: r.revision,
        last_change_source: match r.source {
            ChangeSource::Poll => pb::ChangeSource::Poll,
            ChangeSource::Notification => pb::ChangeSource::Notification,
        } as i32,
        last_notification: r.last_notification.as_ref().map(|n| pb::Notification {
            change_type: change_type_to_pb(n.change_type) as i32,
            version_name: n.version_name.clone(),
            file_version: n.file_version.clone(),
            public_endpoint: n.public_endpoint.clone(),
            received_at: Some(n.received_at.into()),
        }),
        stale: r.stale,
        last_error: r.last_error.clone(),
        changed_at: Some(r.changed_at.into()),
        held_until: r.hold.as_ref().map(|h| h.until.into()),
    }
}

/// An event as prost would build it: what `WatchReply` must encode to.
#[cfg(test)]
pub(crate) fn event_to_pb(e: WatchEvent) -> pb::WatchTenantResponse {
    use pb::WatchEventType as T;
    let tenant_event = |t: T, r: &TenantRecord| pb::WatchTenantResponse {
        r#type: t as i32,
        tenant: Some(tenant_to_pb(r)),
        context_identifier: r.context_identifier.to_string(),
        revision: r.revision,
    };
    let marker = |t: T, ctx: String, revision: u64| pb::WatchTenantResponse {
        r#type: t as i32,
        tenant: None,
        context_identifier: ctx,
        revision,
    };
    match e {
        WatchEvent::Snapshot(r) => tenant_event(T::Snapshot, &r),
        WatchEvent::Changed(r) => tenant_event(T::Changed, &r),
        WatchEvent::Reset => marker(T::Reset, String::new(), 0),
        WatchEvent::Synced(rev) => marker(T::Synced, String::new(), rev),
        WatchEvent::Heartbeat(rev) => marker(T::Heartbeat, String::new(), rev),
        WatchEvent::Removed(ctx, rev) => marker(T::Removed, ctx.to_string(), rev),
        WatchEvent::Closing | WatchEvent::Detached | WatchEvent::Refused(_) => {
            marker(T::Unspecified, String::new(), 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_maps_to_the_same_number() {
        for s in TenantState::ALL {
            assert_eq!(state_to_pb(s) as i32, s as i32, "{s}");
        }
    }

    #[test]
    fn change_types_are_superoffice_numbers_plus_one() {
        for c in [
            ChangeType::Upgrade,
            ChangeType::BackupRestored,
            ChangeType::Suspend,
            ChangeType::Resume,
            ChangeType::Delete,
            ChangeType::Move,
        ] {
            assert_eq!(change_type_to_pb(c) as i32, c as i32 + 1);
        }
    }
}
