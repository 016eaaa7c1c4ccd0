//! Property tests of everything that reads input from the network: the
//! webhook body parser, the token verifier, the state API response parser
//! and the identifier validator. None may panic on any input, and each
//! keeps its promises (an accepted identifier is URL- and log-safe; a
//! verified token was signed by the trusted key for that tenant).
//!
//! proptest runs 256 cases of each by default (CI); set PROPTEST_CASES for
//! a longer run.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};
use tenant_status::{
    ContextId,
    sim::signer::Signer,
    superoffice::{FetchOutcome, parse_state_response},
    token::TokenError,
    webhook::parse_notification,
};

use checks::ISSUER;

/// Arbitrary JSON, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::hash_map(".{0,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A notification-shaped object whose fields may each be of any type.
fn notification_like() -> impl Strategy<Value = Value> {
    (
        prop_oneof![any::<i64>().prop_map(Value::from), json_value()],
        prop_oneof!["[A-Za-z0-9_./%-]{0,70}".prop_map(Value::from), json_value()],
        json_value(),
        json_value(),
        json_value(),
        prop_oneof![".{0,100}".prop_map(Value::from), json_value()],
    )
        .prop_map(|(ct, ctx, vn, fv, pe, tok)| {
            json!({
                "ChangeType": ct, "ContextIdentifier": ctx, "VersionName": vn,
                "FileVersion": fv, "PublicEndpoint": pe, "Token": tok,
            })
        })
}

proptest! {
    #[test]
    fn the_webhook_parser_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_notification(&body);
    }

    #[test]
    fn the_webhook_parser_keeps_its_promises(v in notification_like()) {
        let body = v.to_string();
        match parse_notification(body.as_bytes()) {
            Ok(n) => {
                // Only SuperOffice's six change types, a safe identifier, a
                // host name, and the token as given.
                prop_assert!((n.change_type as i64) <= 5);
                prop_assert!(ContextId::parse(&n.context_identifier).is_ok());
                prop_assert!(n.public_endpoint.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
                prop_assert_eq!(Some(n.token.as_str()), v["Token"].as_str());
            }
            Err(e) => {
                prop_assert_eq!(e.status().as_u16(), 400);
                // The answer never quotes a token-sized piece of the input.
                if let Some(t) = v["Token"].as_str().filter(|t| t.len() >= 16) {
                    prop_assert!(!e.to_string().contains(t));
                }
            }
        }
    }

    #[test]
    fn identifiers_are_url_and_log_safe_or_refused(s in ".{0,80}") {
        match ContextId::parse(&s) {
            Ok(c) => {
                prop_assert!(!c.is_empty() && c.len() <= 64);
                prop_assert!(c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn the_state_parser_never_panics(v in json_value(), raw in prop::collection::vec(any::<u8>(), 0..256)) {
        let ctx = ContextId::parse("Cust1").unwrap();
        let _ = parse_state_response(&raw, &ctx);
        if let Ok(FetchOutcome::Found(o)) = parse_state_response(v.to_string().as_bytes(), &ctx) {
            // Whatever SuperOffice sends, a state is one of its own.
            prop_assert!(tenant_status::TenantState::from_number(o.state as i64).is_some());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_verifier_refuses_every_mutation_of_a_good_token(
        pos in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        garbage in ".{0,300}",
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let signer = Signer::shared(ISSUER).unwrap();
        let v = checks::verifier_for(&signer);
        let good = signer.notification_token("Cust1", Duration::from_secs(300));
        rt.block_on(async {
            prop_assert!(v.verify(&good, "Cust1").await.is_ok());
            // One byte changed anywhere: never accepted (base64url has
            // aliases only in the last character's spare bits, so a change
            // there may decode to the same bytes and verify: skip it).
            let mut bytes = good.clone().into_bytes();
            let i = pos.index(bytes.len());
            if bytes[i] != byte && i + 1 != bytes.len() {
                bytes[i] = byte;
                if let Ok(t) = String::from_utf8(bytes) {
                    let r = v.verify(&t, "Cust1").await;
                    prop_assert!(r.is_err(), "mutated at {} accepted", i);
                }
            }
            let r = v.verify(&garbage, "Cust1").await;
            prop_assert!(matches!(r, Err(TokenError::Malformed(_)) | Err(TokenError::Algorithm(_)) | Err(TokenError::Signature) | Err(TokenError::BadClaims)), "{:?}", r);
            Ok(())
        })?;
    }
}
