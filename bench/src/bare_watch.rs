//! The fan-out baseline: a bare tonic server written the ordinary way. One
//! tokio watch channel holds the record; every WatchTenant stream sends
//! SYNCED, then the record each time it changes, built and encoded by the
//! stream itself (what tonic does with a message a stream yields). No
//! heartbeats, no metrics, no authorization.
//!
//! The bench changes the record with a ListTenants call whose page_token
//! names the new host (so it needs no second listener).

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use tenant_status::pb::{
    self,
    tenant_status_service_server::{TenantStatusService, TenantStatusServiceServer},
};
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};

pub async fn server(addr: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let (tx, _) = watch::channel(crate::lookups::sample());
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(TenantStatusServiceServer::new(Bare(tx)))
        .serve_with_incoming(
            tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
                let s = s?;
                s.set_nodelay(true)?;
                Ok::<_, std::io::Error>(s)
            }),
        )
        .await?;
    Ok(())
}

struct Bare(watch::Sender<pb::Tenant>);

type Events = Pin<Box<dyn Stream<Item = Result<pb::WatchTenantResponse, Status>> + Send>>;

#[tonic::async_trait]
impl TenantStatusService for Bare {
    async fn get_tenant_state(
        &self,
        _: Request<pb::GetTenantStateRequest>,
    ) -> Result<Response<pb::GetTenantStateResponse>, Status> {
        Ok(Response::new(pb::GetTenantStateResponse {
            tenant: Some(self.0.borrow().clone()),
        }))
    }

    type WatchTenantStream = Events;

    async fn watch_tenant(
        &self,
        _: Request<pb::WatchTenantRequest>,
    ) -> Result<Response<Events>, Status> {
        let synced = pb::WatchTenantResponse {
            r#type: pb::WatchEventType::Synced as i32,
            revision: self.0.borrow().revision,
            ..Default::default()
        };
        let changes = WatchStream::from_changes(self.0.subscribe()).map(|t| {
            Ok(pb::WatchTenantResponse {
                r#type: pb::WatchEventType::Changed as i32,
                context_identifier: t.context_identifier.clone(),
                revision: t.revision,
                tenant: Some(t),
            })
        });
        Ok(Response::new(Box::pin(
            futures_util::stream::once(async move { Ok(synced) }).chain(changes),
        )))
    }

    /// The bench's trigger: moves the record to the host in page_token.
    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let host = request.into_inner().page_token;
        self.0.send_modify(|t| {
            t.endpoint = format!("https://{host}/Cust1");
            t.revision += 1;
        });
        Ok(Response::new(pb::ListTenantsResponse::default()))
    }
}
