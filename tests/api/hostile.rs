//! Hostile gRPC callers: oversize requests, too many names, and thousands
//! of streams opened and dropped at once. Each gets a clear status and
//! leaves nothing behind.

use std::time::Duration;

use tenant_status::pb::{self, tenant_status_service_client::TenantStatusServiceClient};

use crate::helpers::*;

#[tokio::test]
async fn oversize_and_overlong_requests_get_a_clear_status() {
    let app = spawn_app().await;
    // 5 MiB identifier: above tonic's 4 MiB message limit.
    let e = app.get(&"x".repeat(5 * 1024 * 1024)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    // Under the message limit but not an identifier.
    let e = app.get(&"x".repeat(100_000)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("at most 64"), "{}", e.message());
    let names: Vec<String> = (0..1001).map(|i| format!("Cust{i}")).collect();
    let e = app
        .client
        .clone()
        .watch_tenant(pb::WatchTenantRequest {
            context_identifiers: names,
            since_revision: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("at most 1000"), "{}", e.message());
    assert_eq!(app.fake.total_requests(), 0, "nothing reached SuperOffice");
}

#[tokio::test]
async fn ten_thousand_streams_opened_and_dropped_at_once_leave_nothing_behind() {
    let app = spawn_app_tracking("Cust1", Duration::from_secs(600)).await;
    eventually("Cust1 tracked", || app.store.contains("Cust1")).await;
    let mut channels = Vec::new();
    for _ in 0..10 {
        channels.push(
            tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let mut opened = Vec::new();
    for i in 0..10_000 {
        let mut client = TenantStatusServiceClient::new(channels[i % 10].clone());
        opened.push(tokio::spawn(async move {
            let names = if i % 100 == 0 {
                Vec::new()
            } else {
                vec!["Cust1".to_owned()]
            };
            let mut s = client
                .watch_tenant(pb::WatchTenantRequest {
                    context_identifiers: names,
                    since_revision: 0,
                })
                .await?
                .into_inner();
            s.message().await?;
            Ok::<_, tonic::Status>(s)
        }));
    }
    let mut streams = Vec::new();
    for o in opened {
        streams.push(o.await.unwrap().expect("every stream opens"));
    }
    eventually("the server counts them", || {
        let (named, all) = app.store.watcher_counts();
        named == 1 && all == 100
    })
    .await;
    drop(streams);
    drop(channels);
    eventually("every subscription released", || {
        app.store.watcher_counts() == (0, 0)
    })
    .await;
    // And the service still answers.
    assert_eq!(app.get("Cust1").await.unwrap().context_identifier, "Cust1");
}
