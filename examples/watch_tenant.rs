//! Gets tenants from tenant-status, then watches them the way a service
//! would: it holds each tenant's latest record, and when the stream breaks
//! it reconnects and resumes from the largest revision it received, so it
//! misses nothing. A RESET from the server (it restarted, or cannot serve
//! that revision without a gap) means: drop what you hold, a complete
//! snapshot follows.
//!
//! ```sh
//! cargo run --example watch_tenant -- --addr http://127.0.0.1:50051 Cust10002 Cust10004
//! ```
//!
//! It uses the crate's generated client, `tenant_status::pb` (a service of
//! yours would depend on the crate, or generate its own from the proto with
//! tonic-prost-build). With --grpc-token-file on the server, set
//! TENANT_STATUS_TOKEN_FILE to a file holding the token. Runs until
//! interrupted.

use std::{collections::HashMap, time::Duration};

use tenant_status::pb::{
    GetTenantStateRequest, Tenant, TenantState, WatchEventType, WatchTenantRequest,
    tenant_status_service_client::TenantStatusServiceClient,
};
use tonic::{Code, Request, Status, metadata::MetadataValue, transport::Endpoint};

/// Worth reconnecting for: the server went away, restarted or the
/// connection broke. Anything else (a malformed name, a refused token) is a
/// mistake that reconnecting will not mend.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
    )
}

fn state(t: Option<&Tenant>) -> String {
    t.map_or("-".into(), |t| {
        TenantState::try_from(t.state).map_or(format!("state {}", t.state), |s| {
            s.as_str_name().trim_start_matches("TENANT_STATE_").into()
        })
    })
}

/// `authorization: Bearer <token>` from TENANT_STATUS_TOKEN_FILE, if set.
fn bearer() -> Result<Option<MetadataValue<tonic::metadata::Ascii>>, Box<dyn std::error::Error>> {
    let Some(path) = std::env::var_os("TENANT_STATUS_TOKEN_FILE") else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path)?;
    let token = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or("the token file holds no token")?;
    Ok(Some(format!("Bearer {token}").parse()?))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut addr = std::env::var("TENANT_STATUS_ADDR").unwrap_or("http://127.0.0.1:50051".into());
    let mut tenants = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs a value")?,
            _ => tenants.push(a),
        }
    }
    if tenants.is_empty() {
        return Err("usage: watch_tenant [--addr http://HOST:PORT] CTX...".into());
    }
    // Connects lazily and again after a break; keepalive pings notice a
    // server that vanished without closing the connection.
    let channel = Endpoint::from_shared(addr)?
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect_lazy();
    let token = bearer()?;
    let mut client =
        TenantStatusServiceClient::with_interceptor(channel, move |mut req: Request<()>| {
            if let Some(t) = &token {
                req.metadata_mut().insert("authorization", t.clone());
            }
            Ok::<_, Status>(req)
        });

    for ctx in &tenants {
        let mut request = Request::new(GetTenantStateRequest {
            context_identifier: ctx.clone(),
        });
        request.set_timeout(Duration::from_secs(30));
        match client.get_tenant_state(request).await {
            Ok(r) => {
                let t = r.into_inner().tenant;
                let api = t.as_ref().map_or("-", |t| t.api.as_str());
                let revision = t.as_ref().map_or(0, |t| t.revision);
                println!(
                    "get {ctx}: {}, api {api}, revision {revision}",
                    state(t.as_ref())
                );
            }
            // NotFound: SuperOffice does not know it; Unavailable: try later.
            Err(s) => println!("get {ctx}: {:?}: {}", s.code(), s.message()),
        }
    }

    let mut held: HashMap<String, Tenant> = HashMap::new();
    let mut since = 0u64; // the largest revision received, of any event
    let mut backoff = Duration::from_millis(250);
    loop {
        let request = WatchTenantRequest {
            context_identifiers: tenants.clone(),
            since_revision: since,
        };
        let outcome: Result<(), Status> = async {
            let mut stream = client.watch_tenant(request).await?.into_inner();
            while let Some(ev) = stream.message().await? {
                let kind = WatchEventType::try_from(ev.r#type).unwrap_or_default();
                if kind == WatchEventType::Reset {
                    println!(
                        "reset: the server cannot resume from revision {since}; dropping {} tenants",
                        held.len()
                    );
                    held.clear();
                    since = 0;
                    continue;
                }
                since = since.max(ev.revision);
                let ctx = &ev.context_identifier;
                match kind {
                    WatchEventType::Snapshot | WatchEventType::Changed => {
                        let word = if kind == WatchEventType::Snapshot { "snapshot" } else { "changed" };
                        let endpoint = ev.tenant.as_ref().map_or("-", |t| t.endpoint.as_str());
                        println!(
                            "{word} {ctx}: {} at {} (revision {})",
                            state(ev.tenant.as_ref()),
                            if endpoint.is_empty() { "-" } else { endpoint },
                            ev.revision
                        );
                        if let Some(t) = ev.tenant
                            && held.get(ctx).is_none_or(|known| known.revision < t.revision)
                        {
                            held.insert(ctx.clone(), t);
                        }
                    }
                    WatchEventType::Removed => {
                        held.remove(ctx);
                        println!("removed {ctx} (revision {})", ev.revision);
                    }
                    WatchEventType::Synced => {
                        backoff = Duration::from_millis(250);
                        println!(
                            "synced at revision {}: holding {} tenants",
                            ev.revision,
                            held.len()
                        );
                    }
                    _ => {} // heartbeats, and kinds this client does not know
                }
            }
            Ok(())
        }
        .await;
        let reason = match outcome {
            Ok(()) => "the server ended the stream".to_owned(),
            Err(s) if retryable(s.code()) => format!("{:?}: {}", s.code(), s.message()),
            Err(s) => return Err(format!("watch: {:?}: {}", s.code(), s.message()).into()),
        };
        let wait = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        println!(
            "stream broke ({reason}); resuming from revision {since} in {:.2}s",
            wait.as_secs_f64()
        );
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}
