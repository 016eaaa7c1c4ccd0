use std::time::{Duration, SystemTime};

use tenant_status::{
    ContextId, TenantState as S,
    pb::{self, TenantState},
    testing::Observation,
    testing::PollResult,
};
use tonic::Code;

use crate::helpers::*;

async fn list(
    app: &TestApp,
    page_size: u32,
    token: &str,
    states: &[TenantState],
) -> Result<pb::ListTenantsResponse, tonic::Status> {
    app.client
        .clone()
        .list_tenants(pb::ListTenantsRequest {
            page_size,
            page_token: token.into(),
            states: states.iter().map(|s| *s as i32).collect(),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn pages_in_identifier_order_with_a_state_filter() {
    let app = spawn_app().await;
    let now = SystemTime::now();
    for i in 0..250 {
        let state = if i % 10 == 0 {
            S::Suspended
        } else {
            S::Running
        };
        app.store.apply_poll(
            &ContextId::parse(&format!("Cust{i:04}")).unwrap(),
            PollResult::Observed(Observation {
                state,
                endpoint: format!("https://sod2.superoffice.com/Cust{i:04}"),
                api: String::new(),
                version: String::new(),
                valid_until: Some(now + Duration::from_secs(60)),
            }),
            now,
        );
    }
    let mut all = vec![];
    let mut token = String::new();
    loop {
        let page = list(&app, 0, &token, &[]).await.unwrap();
        assert!(page.tenants.len() <= 100, "default page size is 100");
        assert_eq!(page.revision, app.store.revision());
        all.extend(page.tenants.into_iter().map(|t| t.context_identifier));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<_> = (0..250).map(|i| format!("Cust{i:04}")).collect();
    assert_eq!(all, expected);

    let suspended = list(&app, 1000, "", &[TenantState::Suspended])
        .await
        .unwrap();
    assert_eq!(suspended.tenants.len(), 25);
    assert!(suspended.next_page_token.is_empty());
    assert!(
        suspended
            .tenants
            .iter()
            .all(|t| state(t) == TenantState::Suspended)
    );

    let big = list(&app, 100_000, "", &[]).await.unwrap();
    assert_eq!(
        big.tenants.len(),
        250,
        "page size is capped at 1000, which is more than 250"
    );
}

#[tokio::test]
async fn bad_tokens_and_states_are_invalid_arguments() {
    let app = spawn_app().await;
    let e = list(&app, 10, "not a token!", &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("page_token"), "{}", e.message());
    let e = app
        .client
        .clone()
        .list_tenants(pb::ListTenantsRequest {
            page_size: 1,
            page_token: String::new(),
            states: vec![7],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("states holds 7"), "{}", e.message());
}
