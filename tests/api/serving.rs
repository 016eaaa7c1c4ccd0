use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use prost::Message;
use tenant_status::{ContextId, TenantState, pb, testing::Observation, testing::PollResult};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::*;

#[tokio::test]
async fn health_is_serving_then_not_serving_at_shutdown() {
    let mut app = spawn_app().await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in ["", "tenantstatus.v1.TenantStatusService"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
    let mut w = health
        .watch(HealthCheckRequest {
            service: "tenantstatus.v1.TenantStatusService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        w.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    app.begin_shutdown();
    assert_eq!(
        w.message().await.unwrap().unwrap().status(),
        ServingStatus::NotServing
    );
    drop(w);
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_and_describe_the_service() {
    let app = spawn_app().await;
    {
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut c = ServerReflectionClient::new(app.channel.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = c
            .server_reflection_info(futures_util::stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            resp.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list")
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(
            names.contains(&"tenantstatus.v1.TenantStatusService"),
            "{names:?}"
        );
        assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    }
    {
        use tonic_reflection::pb::v1alpha::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut c = ServerReflectionClient::new(app.channel.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "tenantstatus.v1.TenantStatusService".into(),
            )),
        };
        let mut resp = c
            .server_reflection_info(futures_util::stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::FileDescriptorResponse(fd)) =
            resp.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected a file descriptor")
        };
        let file =
            prost_types::FileDescriptorProto::decode(&fd.file_descriptor_proto[0][..]).unwrap();
        assert_eq!(file.package(), "tenantstatus.v1");
    }
}

#[tokio::test]
async fn grpc_web_answers_over_http1() {
    let app = spawn_app().await;
    let now = SystemTime::now();
    app.store.apply_poll(
        &ContextId::parse("Cust1").unwrap(),
        PollResult::Observed(Observation {
            state: TenantState::Running,
            endpoint: "https://sod3.superoffice.com/Cust1".into(),
            api: String::new(),
            version: String::new(),
            valid_until: Some(now + Duration::from_secs(60)),
        }),
        now,
    );
    let msg = pb::GetTenantStateRequest {
        context_identifier: "Cust1".into(),
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    let resp = reqwest::Client::builder()
        .http1_only()
        .build()
        .unwrap()
        .post(format!(
            "http://{}/tenantstatus.v1.TenantStatusService/GetTenantState",
            app.addr
        ))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(frame)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc-web+proto");
    let body = resp.bytes().await.unwrap();
    assert_eq!(body[0], 0, "a data frame first");
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    let got = pb::GetTenantStateResponse::decode(&body[5..5 + len]).unwrap();
    assert_eq!(
        got.tenant.unwrap().endpoint,
        "https://sod3.superoffice.com/Cust1"
    );
    let trailers = String::from_utf8_lossy(&body[5 + len + 5..]);
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
}
