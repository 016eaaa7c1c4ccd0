//! Hostile gRPC callers: oversize requests, too many names, and thousands
//! of streams opened and dropped at once. Each gets a clear status and
//! leaves nothing behind.

use std::time::Duration;

use tenant_status::pb::{self, tenant_status_service_client::TenantStatusServiceClient};

use crate::helpers::*;

#[tokio::test]
async fn oversize_and_overlong_requests_get_a_clear_status() {
    let app = spawn_app().await;
    // 5 MiB identifier, and 300 KiB: above --grpc-max-request-size
    // (256 KiB by default).
    for size in [5 * 1024 * 1024, 300 * 1024] {
        let e = app.get(&"x".repeat(size)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
        assert!(e.message().contains("message length too large"), "{e:?}");
    }
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

#[tokio::test]
async fn past_max_watchers_a_stream_is_refused_until_one_closes() {
    let app = spawn_app_with(|fake, config| {
        serve_running(fake, "Cust1");
        config.max_watchers = 3;
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut s = app.watch(&["Cust1"], 0).await.expect("within the limit");
        next(&mut s).await;
        open.push(s);
    }
    let e = app.watch(&["Cust1"], 0).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("--max-watchers"), "{}", e.message());
    // Watching everything is a stream too.
    let e = app.watch(&[], 0).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    // Lookups are not limited by it.
    assert_eq!(app.get("Cust1").await.unwrap().context_identifier, "Cust1");
    // A closed stream gives its place back.
    drop(open.pop());
    let mut reopened = None;
    for _ in 0..50 {
        match app.watch(&["Cust1"], 0).await {
            Ok(s) => {
                reopened = Some(s);
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let mut s = reopened.expect("a place frees when a stream closes");
    assert_eq!(
        state(next(&mut s).await.tenant.as_ref().unwrap()),
        pb::TenantState::Running
    );
}

#[tokio::test]
async fn oversize_call_headers_are_refused_and_the_client_carries_on() {
    let app = spawn_app_with(|fake, config| {
        serve_running(fake, "Cust1");
        config.grpc_max_header_size = 16 * 1024;
    })
    .await;
    let call = |padding: usize| {
        let mut client = app.client.clone();
        async move {
            let mut request = tonic::Request::new(pb::GetTenantStateRequest {
                context_identifier: "Cust1".into(),
            });
            request
                .metadata_mut()
                .insert("x-padding", "p".repeat(padding).parse().unwrap());
            client.get_tenant_state(request).await
        }
    };
    // Over the limit: HTTP/2 refuses the stream with 431, which a gRPC
    // client sees as UNKNOWN "mapped from HTTP status code 431".
    let e = call(20 * 1024).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unknown, "{e:?}");
    assert!(e.message().contains("431"), "{e:?}");
    // Far over it (twice the limit): the peer is told to calm down with a
    // GOAWAY and the connection closes.
    let e = call(64 * 1024).await.unwrap_err();
    assert!(format!("{e:?}").contains("ENHANCE_YOUR_CALM"), "{e:?}");
    // Neither call was handled.
    assert_eq!(app.fake.requests("Cust1"), 0);
    // The client reconnects, and headers under the limit pass.
    let t = call(8 * 1024).await.unwrap().into_inner();
    assert_eq!(t.tenant.unwrap().context_identifier, "Cust1");
}

#[tokio::test]
async fn past_max_concurrent_streams_a_connection_queues_its_calls() {
    let app = spawn_app_with(|fake, config| {
        serve_running(fake, "Cust1");
        config.max_concurrent_streams = 5;
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..5 {
        let mut s = app.watch(&["Cust1"], 0).await.expect("within the limit");
        next(&mut s).await;
        open.push(s);
    }
    // The sixth on the same connection is not refused: HTTP/2 makes the
    // client wait for a free stream.
    let mut client = app.client.clone();
    let sixth = tokio::spawn(async move {
        client
            .get_tenant_state(pb::GetTenantStateRequest {
                context_identifier: "Cust1".into(),
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!sixth.is_finished(), "a sixth stream was opened");
    // Another connection is not held up.
    let other = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let t = TenantStatusServiceClient::new(other)
        .get_tenant_state(pb::GetTenantStateRequest {
            context_identifier: "Cust1".into(),
        })
        .await
        .unwrap();
    assert_eq!(t.into_inner().tenant.unwrap().context_identifier, "Cust1");
    // A stream closes; the queued call goes through.
    drop(open.pop());
    let t = tokio::time::timeout(Duration::from_secs(5), sixth)
        .await
        .expect("the queued call runs once a stream frees")
        .unwrap()
        .unwrap();
    assert_eq!(t.into_inner().tenant.unwrap().context_identifier, "Cust1");
}
