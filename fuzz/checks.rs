//! What each fuzz target checks, shared by the libFuzzer targets in
//! `fuzz_targets/` and by `tests/fuzz_corpus.rs`, which replays the kept
//! corpus and every found crash on stable in plain `cargo test`.
//!
//! Each check feeds network input to one parser and asserts the promises
//! it makes beyond "does not panic".

#![allow(dead_code)] // each target uses one check

use std::{
    sync::OnceLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use tenant_status::{
    ContextId, TenantState,
    sim::signer::Signer,
    superoffice::{FetchOutcome, parse_state_response},
    token::CONTEXT_CLAIM,
    token::{Verifier, VerifierSettings, load_keys},
    webhook::parse_notification,
};

pub const ISSUER: &str = "https://sod.superoffice.com";

/// The webhook body parser: an accepted notification has a safe
/// identifier, one of the six change types and a bare host; a refusal is
/// a 400 that never quotes the token.
pub fn webhook_body(data: &[u8]) {
    match parse_notification(data) {
        Ok(n) => {
            assert!((n.change_type as i64) <= 5);
            assert!(ContextId::parse(&n.context_identifier).is_ok());
            assert!(
                n.public_endpoint
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            );
        }
        Err(e) => {
            assert_eq!(e.status().as_u16(), 400);
            let text = e.to_string();
            let value: Option<serde_json::Value> = serde_json::from_slice(data).ok();
            if let Some(token) = value
                .as_ref()
                .and_then(|v| v.get("Token"))
                .and_then(|t| t.as_str())
                .filter(|t| t.len() >= 16)
            {
                assert!(!text.contains(token), "a refusal quotes the token");
            }
        }
    }
}

/// The state API response parser: whatever SuperOffice sends, a state is
/// one of its own and the endpoint is what it said.
pub fn state_response(data: &[u8]) {
    let ctx = ContextId::parse("Cust1").unwrap();
    if let Ok(FetchOutcome::Found(o)) = parse_state_response(data, &ctx) {
        assert!(TenantState::from_number(o.state as i64).is_some());
    }
}

/// The identifier validator: accepted identifiers are 1 to 64 of
/// `[A-Za-z0-9_-]` (safe in a URL path and a log line), and a refusal
/// says why.
pub fn context_id(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    match ContextId::parse(&s) {
        Ok(c) => {
            assert!(!c.is_empty() && c.len() <= 64);
            assert!(
                c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

struct Fixture {
    signer: Signer,
    verifier: Verifier,
    runtime: tokio::runtime::Runtime,
}

/// A verifier that trusts `signer`'s key, read from its certificate file
/// as the service reads SuperOffice's, for issuer `ISSUER`, leeway 60 s.
pub fn verifier_for(signer: &Signer) -> Verifier {
    let dir = std::env::temp_dir().join(format!(
        "ts-verifier-{}-{}",
        std::process::id(),
        signer.kid()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("so.crt");
    std::fs::write(&cert, signer.certificate_pem()).unwrap();
    let keys = load_keys(&cert).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Verifier::new(VerifierSettings {
        issuer: ISSUER.into(),
        audience: None,
        leeway: Duration::from_secs(60),
        keys,
        jwks_url: None,
        jwks_refetch_interval: Duration::from_secs(60),
        jwks_refresh_interval: Duration::from_secs(3600),
    })
    .unwrap()
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let signer = Signer::shared(ISSUER).unwrap();
        let verifier = verifier_for(&signer);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        Fixture {
            signer,
            verifier,
            runtime,
        }
    })
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Signs `header.payload` (both given as raw bytes) with the trusted key,
/// so the fuzzer reaches the checks behind the signature.
fn signed(header: &[u8], payload: &[u8]) -> String {
    let f = fixture();
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let key =
        jsonwebtoken::EncodingKey::from_rsa_pem(f.signer.private_key_pem().as_bytes()).unwrap();
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::RS256)
            .unwrap();
    format!("{message}.{signature}")
}

/// The token verifier, on tokens for tenant `Cust1`. The first byte picks
/// what the rest is:
/// - 0: the token itself, as text;
/// - 1: the claims, signed with the trusted key under a good header;
/// - 2: the header, over good claims, signed with the trusted key.
///
/// A token is accepted only if its header says RS256 and its claims name
/// our issuer, an expiry not past (with leeway), and no other tenant.
pub fn token(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let good_header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": f.signer.kid()});
    let good_claims =
        serde_json::json!({"iss": ISSUER, "exp": now() + 300, CONTEXT_CLAIM: "Cust1"});
    let (token, header, claims) = match mode % 3 {
        0 => (String::from_utf8_lossy(rest).into_owned(), None, None),
        1 => {
            let h = serde_json::to_vec(&good_header).unwrap();
            (
                signed(&h, rest),
                Some(good_header),
                serde_json::from_slice(rest).ok(),
            )
        }
        _ => {
            let c = serde_json::to_vec(&good_claims).unwrap();
            (
                signed(rest, &c),
                serde_json::from_slice(rest).ok(),
                Some(good_claims),
            )
        }
    };
    let verified = f.runtime.block_on(f.verifier.verify(&token, "Cust1"));
    if mode % 3 == 0 {
        // Text the fuzzer made up carries no valid signature of our key.
        assert!(verified.is_err(), "accepted a token nobody signed");
        return;
    }
    if let Ok(v) = verified {
        let header: serde_json::Value = header.expect("an accepted header is JSON");
        assert_eq!(header["alg"], "RS256");
        let claims: serde_json::Value = claims.expect("accepted claims are JSON");
        assert_eq!(claims["iss"], ISSUER);
        let exp = claims["exp"].as_f64().expect("an accepted token has exp");
        assert!(exp as i64 + 60 >= now(), "accepted an expired token");
        assert_eq!(v.expires_at as f64, exp.floor());
        match &claims[CONTEXT_CLAIM] {
            serde_json::Value::Null => {}
            serde_json::Value::String(s) => assert_eq!(s, "Cust1"),
            serde_json::Value::Array(all) => {
                assert!(all.iter().any(|c| c == "Cust1"))
            }
            other => panic!("accepted a ctx of {other}"),
        }
    }
}
