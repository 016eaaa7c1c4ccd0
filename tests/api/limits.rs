//! Every limit, each a flag, each shown to hold over real sockets. The
//! webhook's: the rate from one client and from all together, the request
//! head over HTTP/1.1 and HTTP/2 and its time, the body's size and time,
//! connections, the replay memory. The gRPC listener's: request and header
//! size, watch streams, concurrent streams.

use std::{net::IpAddr, time::Duration};

use tenant_status::{
    ChangeType,
    pb::{self, tenant_status_service_client::TenantStatusServiceClient},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// A webhook client whose connections come from `from` (any 127.0.0.0/8
/// address is this host's on Linux).
fn client_from(from: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_flood_from_many_addresses_meets_the_total_limit() {
    let app = spawn_app_with(|fake, config| {
        serve_running(fake, "Cust1");
        // Each address stays inside its own limit (2 at once); together
        // they are far past the total of 10 a second.
        config.webhook.rate_limit = Some((2.0, 2.0));
        config.webhook.rate_limit_total = Some(10.0);
    })
    .await;
    let revision = app.store.revision();
    let clients: Vec<_> = (2..102u8)
        .map(|i| client_from(IpAddr::from([127, 0, 0, i])))
        .collect();
    // Two requests from each of 100 addresses, all at once. The body is
    // not JSON: any request the limits let through is refused 400 later,
    // so nothing can change the store.
    let url = app.webhook_url.as_str();
    let sends = clients.iter().flat_map(|c| {
        (0..2).map(move |_| {
            c.post(url)
                .header("content-type", "application/json")
                .body("not json")
                .send()
        })
    });
    let started = std::time::Instant::now();
    let answers = futures_util::future::join_all(sends).await;
    let took = started.elapsed();
    let (mut limited, mut through) = (0, 0);
    for r in answers {
        let r = r.expect("the webhook answers every request");
        match r.status().as_u16() {
            429 => {
                limited += 1;
                let wait: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=2).contains(&wait), "Retry-After {wait}");
                let (_, json) = json_response(r).await;
                assert_eq!(json["reason"], "rate_limited_total", "{json}");
                assert!(
                    json["error"].as_str().unwrap().contains("all clients"),
                    "{json}"
                );
            }
            400 => through += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(limited + through, 200);
    // The total limit lets 10 through at once, plus 10 a second for as long
    // as the 200 took (bounded by the time they took, not by a time of
    // ours, so a loaded machine that takes longer lets more through and
    // still holds; one more for the refill's rounding).
    let allowed = 10 + (10.0 * took.as_secs_f64()).ceil() as usize + 1;
    assert!(
        through <= allowed,
        "{through} of 200 got through in {took:?}: the total limit allows {allowed}"
    );
    assert!(limited > 0, "{limited} of 200 limited in {took:?}");
    assert_eq!(app.store.revision(), revision, "the flood changed nothing");
    // The gRPC side answers throughout.
    assert_eq!(app.get("Cust1").await.unwrap().context_identifier, "Cust1");
    let (_, text) = app.admin_get("/metrics").await;
    assert!(text.contains(r#"reason="rate_limited_total""#), "{text}");
    // Once the flood stops, SuperOffice's notification gets through. (On
    // a loaded machine the first JWKS fetch may still be under way: a 401
    // then would be about the keys, not the limits, so wait for them.)
    until_jwks_keys(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = app.fake.notification(ChangeType::Suspend, "Cust1", None);
    let (status, json) = app.post_notification(&body).await;
    assert_eq!(status.as_u16(), 204, "{json}");
}

#[tokio::test]
async fn an_oversize_request_head_is_refused_over_http1_and_http2() {
    let app = spawn_app_with(|_, config| {
        config.webhook.max_header_size = 16 * 1024;
    })
    .await;
    let revision = app.store.revision();
    let body = app
        .fake
        .notification(ChangeType::Suspend, "Cust1", None)
        .to_string();
    let padding = "p".repeat(32 * 1024);

    // HTTP/1.1: 431, and the connection is closed.
    let mut conn = tokio::net::TcpStream::connect(app.webhook_addr)
        .await
        .unwrap();
    let head = format!(
        "POST /NotifyCustomerStateChange HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-padding: {padding}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");

    // HTTP/2: the stream is refused; the connection serves the next one.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .post(&app.webhook_url)
        .header("content-type", "application/json")
        .header("x-padding", &padding)
        .body(body.clone())
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status().as_u16(), 431),
        Err(e) => assert!(e.is_request(), "{e:?}"),
    }
    assert_eq!(app.store.revision(), revision, "nothing was applied");
    let r = h2
        .post(&app.webhook_url)
        .header("content-type", "application/json")
        .header("x-padding", "p".repeat(1024))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status().as_u16(), 204);
    assert!(app.store.contains("Cust1"));
}

#[tokio::test]
async fn the_body_size_and_time_limits_are_the_configured_ones() {
    let app = spawn_app_with(|_, config| {
        config.webhook.max_body = 2 * 1024;
        config.webhook.body_timeout = Duration::from_millis(500);
    })
    .await;
    let mut n = app.fake.notification(ChangeType::Suspend, "Cust1", None);
    n["Pad"] = "x".repeat(3 * 1024).into();
    let (status, json) = app
        .post_raw(Some("application/json"), n.to_string().into_bytes())
        .await;
    assert_eq!(status.as_u16(), 413, "{json}");
    assert_eq!(json["reason"], "body_too_large");
    assert!(
        json["error"].as_str().unwrap().contains("2048 bytes"),
        "{json}"
    );

    // A body announced and never finished: 408 once the time is up.
    let mut conn = tokio::net::TcpStream::connect(app.webhook_addr)
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    conn.write_all(
        b"POST /NotifyCustomerStateChange HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"Change",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    assert!(text.contains("500ms"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(!app.store.contains("Cust1"));
}

#[tokio::test]
async fn past_max_connections_a_client_waits_until_one_closes() {
    let app = spawn_app_with(|_, config| {
        config.webhook.max_connections = 2;
    })
    .await;
    // Two connections held open mid-request.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::TcpStream::connect(app.webhook_addr)
            .await
            .unwrap();
        c.write_all(b"POST /NotifyCustomerStateChange HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        held.push(c);
    }
    // Give the server time to take both up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let post = || {
        app.http
            .post(&app.webhook_url)
            .header("content-type", "application/json")
            .body("not json")
            .timeout(Duration::from_millis(500))
            .send()
    };
    // A third waits in the backlog: no answer.
    let e = post().await.unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    // One closes; the next is served.
    drop(held.pop());
    let mut answered = None;
    for _ in 0..20 {
        if let Ok(r) = post().await {
            answered = Some(r.status().as_u16());
            break;
        }
    }
    assert_eq!(answered, Some(400));
}

#[tokio::test]
async fn oversize_and_overlong_requests_get_a_clear_status() {
    let app = spawn_app().await;
    // 5 MiB identifier, and 300 KiB: above --grpc-max-request-size
    // (256 KiB by default).
    for size in [5 * 1024 * 1024, 300 * 1024] {
        let e = app.get(&"x".repeat(size)).await.unwrap_err();
        // The gRPC spec's code for a message over the receiver's limit,
        // and a sentence naming the flag.
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        assert!(
            e.message().contains(&format!(
                "is {} bytes",
                size + 1 + (size + 1).ilog2() as usize / 7 + 1
            )) && e.message().contains("more than the 262144 bytes")
                && e.message().contains("--grpc-max-request-size"),
            "{e:?}"
        );
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

#[tokio::test]
async fn a_chunked_body_past_the_limit_is_cut_off_with_413() {
    let app = spawn_app().await;
    let mut conn = tokio::net::TcpStream::connect(app.webhook_addr)
        .await
        .unwrap();
    let head = "POST /NotifyCustomerStateChange HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    conn.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 16 * 1024];
    // 80 KiB announced in chunks, never finished; the server must answer
    // once 64 KiB have arrived, without waiting for the end.
    for _ in 0..5 {
        let _ = conn
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await;
        let _ = conn.write_all(&chunk).await;
        let _ = conn.write_all(b"\r\n").await;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("body_too_large"), "{text}");
}

#[tokio::test]
async fn a_full_replay_memory_refuses_rather_than_forgets() {
    let app = spawn_app_with(|_, config| config.webhook.seen_tokens_max = 1).await;
    assert_eq!(
        app.notify(ChangeType::Resume, "Cust1", None).await,
        reqwest::StatusCode::NO_CONTENT
    );
    let r = app
        .post_raw_response(
            Some("application/json"),
            app.fake
                .notification(ChangeType::Resume, "Cust2", None)
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(r.headers()["retry-after"], "5");
    let (status, json) = json_response(r).await;
    assert_eq!(status.as_u16(), 503, "{json}");
    assert_eq!(json["reason"], "busy");
    assert!(!app.store.contains("Cust2"));
}

#[tokio::test]
async fn a_flood_from_one_client_is_answered_429_before_any_work() {
    // A tight limit: 1 a second, 3 at once.
    let app = spawn_app_with(|fake, config| {
        serve_running(fake, "Cust1");
        config.webhook.rate_limit = Some((1.0, 3.0));
    })
    .await;
    let revision = app.store.revision();
    let mut limited = 0;
    let mut first_limited = None;
    for _ in 0..20 {
        let r = app
            .post_raw_response(
                Some("application/json"),
                app.fake
                    .notification(ChangeType::Suspend, "Cust9", None)
                    .to_string()
                    .into_bytes(),
            )
            .await;
        if r.status().as_u16() == 429 {
            limited += 1;
            if first_limited.is_none() {
                assert!(r.headers().contains_key("retry-after"));
                let (_, json) = json_response(r).await;
                assert_eq!(json["reason"], "rate_limited");
                first_limited = Some(());
            }
        }
    }
    assert!(limited >= 16, "{limited} of 20 limited");
    // The three that got through were applied; the flood changed nothing
    // else, and gRPC still answers.
    assert!(app.store.revision() > revision);
    let t = app.get("Cust1").await.unwrap();
    assert_eq!(t.context_identifier, "Cust1");
    let (_, text) = app.admin_get("/metrics").await;
    assert!(text.contains(r#"reason="rate_limited""#));
}

#[tokio::test]
async fn headers_dripped_a_byte_at_a_time_are_cut_off() {
    let app = spawn_app_with(|_, config| {
        config.webhook.header_timeout = Duration::from_millis(800);
    })
    .await;
    let mut conn = tokio::net::TcpStream::connect(app.webhook_addr)
        .await
        .unwrap();
    let head = b"POST /NotifyCustomerStateChange HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n";
    let started = tokio::time::Instant::now();
    let mut closed = false;
    for b in head.iter().cycle() {
        if conn.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(100), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {
                // An answer (408) then the close: also a cut-off.
                closed = true;
                break;
            }
            Err(_) => {}
        }
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    assert!(
        closed,
        "the server still waits for headers after {:?}",
        started.elapsed()
    );
    // Everyone else is served meanwhile.
    assert_eq!(
        app.notify(ChangeType::Resume, "Cust1", None).await,
        reqwest::StatusCode::NO_CONTENT
    );
}
