//! The webhook's limits, each a flag, each shown to hold over real
//! sockets: the total rate under a flood from many addresses, the request
//! head over HTTP/1.1 and HTTP/2, and the body's size and time.

use std::{net::IpAddr, time::Duration};

use tenant_status::core::tenant::ChangeType;
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
    let answers = futures_util::future::join_all(sends).await;
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
    // 10 at once, plus 10 a second for as long as the 200 took.
    assert!(
        limited >= 100,
        "{limited} of 200 limited, {through} through"
    );
    assert_eq!(app.store.revision(), revision, "the flood changed nothing");
    // The gRPC side answers throughout.
    assert_eq!(app.get("Cust1").await.unwrap().context_identifier, "Cust1");
    let (_, text) = app.admin_get("/metrics").await;
    assert!(text.contains(r#"reason="rate_limited_total""#), "{text}");
    // Once the flood stops, SuperOffice's notification gets through.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = app.notify(ChangeType::Suspend, "Cust1", None).await;
    assert_eq!(status.as_u16(), 204);
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
