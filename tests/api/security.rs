//! TLS, mTLS and bearer tokens on the gRPC listener.

use crate::helpers::*;
use tenant_status::{
    config::TlsFiles,
    files::BearerTokens,
    pb::{self, tenant_status_service_client::TenantStatusServiceClient},
    sim::devcerts::DevCerts,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

async fn tls_app(certs: &DevCerts, mtls: bool) -> TestApp {
    let tls = TlsFiles {
        cert_pem: certs.server_pem.clone().into_bytes(),
        key_pem: certs.server_key.clone().into_bytes(),
        client_ca_pem: mtls.then(|| certs.ca_pem.clone().into_bytes()),
    };
    spawn_app_with(move |fake, config| {
        serve_running(fake, "Cust1");
        config.tls = Some(tls);
    })
    .await
}

async fn tls_client(
    app: &TestApp,
    certs: &DevCerts,
    identity: bool,
) -> Result<TenantStatusServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&certs.ca_pem))
        .domain_name("localhost");
    if identity {
        tls = tls.identity(Identity::from_pem(&certs.client_pem, &certs.client_key));
    }
    let channel = Channel::from_shared(format!("https://{}", app.addr))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(TenantStatusServiceClient::new(channel))
}

async fn get_via(
    client: Result<TenantStatusServiceClient<Channel>, tonic::transport::Error>,
) -> Result<pb::Tenant, String> {
    let mut client = client.map_err(|e| format!("{e:?}"))?;
    client
        .get_tenant_state(pb::GetTenantStateRequest {
            context_identifier: "Cust1".into(),
        })
        .await
        .map(|r| r.into_inner().tenant.unwrap())
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test]
async fn tls_serves_grpc_and_mtls_requires_a_client_certificate() {
    let certs = DevCerts::generate().unwrap();
    let app = tls_app(&certs, false).await;
    let t = get_via(tls_client(&app, &certs, false).await)
        .await
        .unwrap();
    assert_eq!(t.context_identifier, "Cust1");
    // Plaintext to a TLS listener fails.
    let plain = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await;
    let plain = plain.map(TenantStatusServiceClient::new);
    assert!(get_via(plain).await.is_err());

    let app = tls_app(&certs, true).await;
    assert!(get_via(tls_client(&app, &certs, true).await).await.is_ok());
    let refused = get_via(tls_client(&app, &certs, false).await).await;
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    // A client certificate from another CA is refused too.
    let other = DevCerts::generate().unwrap();
    let mixed = DevCerts {
        ca_pem: certs.ca_pem.clone(),
        server_pem: String::new(),
        server_key: String::new(),
        client_pem: other.client_pem.clone(),
        client_key: other.client_key.clone(),
    };
    assert!(get_via(tls_client(&app, &mixed, true).await).await.is_err());
}

#[tokio::test]
async fn bearer_tokens_guard_the_service_but_not_health_or_reflection() {
    let dir = temp_dir("tokens");
    let file = dir.join("tokens");
    std::fs::write(
        &file,
        "# callers\nsecret-token-of-dashboards\nsecret-token-of-billing\n",
    )
    .unwrap();
    let tokens = std::sync::Arc::new(BearerTokens::from_file(&file).unwrap());
    let app = spawn_app_with(move |fake, config| {
        serve_running(fake, "Cust1");
        config.access = Some(tokens);
    })
    .await;
    let call = |token: Option<&'static str>| {
        let mut client = app.client.clone();
        async move {
            let mut req = tonic::Request::new(pb::GetTenantStateRequest {
                context_identifier: "Cust1".into(),
            });
            if let Some(t) = token {
                req.metadata_mut()
                    .insert("authorization", t.parse().unwrap());
            }
            client.get_tenant_state(req).await.map(|_| ())
        }
    };
    let e = call(None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("Bearer"), "{}", e.message());
    let e = call(Some("Bearer wrong-token-entirely")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(call(Some("Bearer secret-token-of-billing")).await.is_ok());
    assert!(
        call(Some("Bearer secret-token-of-dashboards"))
            .await
            .is_ok()
    );

    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tenantstatus.v1.TenantStatusService".into(),
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().status, 1, "SERVING without a token");
    let (_, text) = app.admin_get("/metrics").await;
    assert!(text.contains(r#"code="UNAUTHENTICATED""#));
}
