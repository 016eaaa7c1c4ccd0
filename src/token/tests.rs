//! The verifier's tests: every kind of good and bad token, keys from files
//! and from a JWKS.

use super::*;
use crate::sim::signer::Signer;
use serde_json::json;

const ISSUER: &str = "https://sod.superoffice.com";

fn verifier_for(signer: &Signer) -> Verifier {
    Verifier::new(settings_for(signer)).unwrap()
}

fn settings_for(signer: &Signer) -> VerifierSettings {
    let dir = std::env::temp_dir().join(format!(
        "ts-token-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("so.crt");
    std::fs::write(&cert, signer.certificate_pem()).unwrap();
    VerifierSettings {
        issuer: ISSUER.to_owned(),
        audience: None,
        leeway: Duration::from_secs(60),
        keys: load_keys(&cert).unwrap(),
        jwks_url: None,
        jwks_refetch_interval: JWKS_REFETCH_INTERVAL,
        jwks_refresh_interval: Duration::from_secs(3600),
    }
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn a_certificate_file_verifies_good_tokens_and_refuses_forgeries() {
    let signer = Signer::shared(ISSUER).unwrap();
    let v = verifier_for(&signer);
    let good = signer.notification_token("Cust1", Duration::from_secs(300));
    let verified = v.verify(&good, "Cust1").await.unwrap();
    assert!(verified.expires_at > unix_seconds(SystemTime::now()));

    assert_eq!(
        v.verify(&good, "Cust2").await,
        Err(TokenError::ContextMismatch)
    );

    let claims = signer.notification_claims("Cust1", Duration::from_secs(300));
    let none = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims));
    assert_eq!(
        v.verify(&none, "Cust1").await,
        Err(TokenError::Algorithm("none".into()))
    );

    // HS256 with our own public key as the shared secret.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(signer.certificate_pem().as_bytes()),
    )
    .unwrap();
    assert_eq!(
        v.verify(&hs, "Cust1").await,
        Err(TokenError::Algorithm("HS256".into()))
    );

    // The payload swapped for another tenant's, signature kept.
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = b64(&signer.notification_claims("Cust9", Duration::from_secs(300)));
    assert_eq!(
        v.verify(&parts.join("."), "Cust9").await,
        Err(TokenError::Signature)
    );

    for garbage in ["", "abc", "a.b.c", "....", &"x".repeat(MAX_TOKEN_LEN + 1)] {
        assert!(
            matches!(
                v.verify(garbage, "Cust1").await,
                Err(TokenError::Malformed(_))
            ),
            "{garbage:.20}"
        );
    }
}

#[tokio::test]
async fn time_and_issuer_are_checked_with_leeway() {
    let signer = Signer::shared(ISSUER).unwrap();
    let v = verifier_for(&signer);
    let now = unix_seconds(SystemTime::now());
    let token = |iss: &str, nbf: u64, exp: u64| {
        signer.sign(&json!({"iss": iss, "nbf": nbf, "exp": exp, CONTEXT_CLAIM: "Cust1"}))
    };
    assert_eq!(
        v.verify(&token(ISSUER, now - 600, now - 120), "Cust1")
            .await,
        Err(TokenError::Expired)
    );
    // Within the 60 s leeway.
    assert!(
        v.verify(&token(ISSUER, now - 600, now - 30), "Cust1")
            .await
            .is_ok()
    );
    assert_eq!(
        v.verify(&token(ISSUER, now + 600, now + 900), "Cust1")
            .await,
        Err(TokenError::NotYetValid)
    );
    assert_eq!(
        v.verify(
            &token("https://online.superoffice.com", now, now + 60),
            "Cust1"
        )
        .await,
        Err(TokenError::Issuer(ISSUER.into()))
    );
    let no_exp = signer.sign(&json!({"iss": ISSUER}));
    assert_eq!(
        v.verify(&no_exp, "Cust1").await,
        Err(TokenError::MissingClaim("exp".into()))
    );
    // Without a context claim the token is not bound to a tenant.
    let unbound = signer.sign(&json!({"iss": ISSUER, "exp": now + 60}));
    assert!(v.verify(&unbound, "Cust7").await.is_ok());
}

#[tokio::test]
async fn another_key_is_refused_and_several_files_rotate() {
    let ours = Signer::shared(ISSUER).unwrap();
    let foreign = Signer::generate(ISSUER).unwrap();
    let v = verifier_for(&ours);
    let forged = foreign.notification_token("Cust1", Duration::from_secs(60));
    assert_eq!(v.verify(&forged, "Cust1").await, Err(TokenError::Signature));

    // Both keys trusted: the old certificate and its successor, the
    // second as a bare public key.
    let dir = std::env::temp_dir().join(format!("ts-rotate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let both = dir.join("both.pem");
    std::fs::write(
        &both,
        format!("{}\n{}", ours.certificate_pem(), foreign.public_key_pem()),
    )
    .unwrap();
    let keys = load_keys(&both).unwrap();
    assert_eq!(keys.len(), 2);
    let v = Verifier::new(VerifierSettings {
        issuer: ISSUER.into(),
        audience: None,
        leeway: Duration::from_secs(60),
        keys,
        jwks_url: None,
        jwks_refetch_interval: JWKS_REFETCH_INTERVAL,
        jwks_refresh_interval: Duration::from_secs(3600),
    })
    .unwrap();
    assert!(v.verify(&forged, "Cust1").await.is_ok());
    let good = ours.notification_token("Cust1", Duration::from_secs(60));
    assert!(v.verify(&good, "Cust1").await.is_ok());
}

#[tokio::test]
async fn an_audience_is_checked_when_configured() {
    let signer = Signer::shared(ISSUER).unwrap();
    let v = Verifier::new(VerifierSettings {
        audience: Some("our-app".into()),
        ..settings_for(&signer)
    })
    .unwrap();
    let now = unix_seconds(SystemTime::now());
    let ours = signer.sign(&json!({"iss": ISSUER, "exp": now + 60, "aud": "our-app"}));
    assert!(v.verify(&ours, "Cust1").await.is_ok());
    let theirs = signer.sign(&json!({"iss": ISSUER, "exp": now + 60, "aud": "other"}));
    assert_eq!(
        v.verify(&theirs, "Cust1").await,
        Err(TokenError::Audience("our-app".into()))
    );
}

#[test]
fn key_files_that_hold_no_key_are_refused_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("ts-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN NOTHING-----\nAAAA\n-----END NOTHING-----\n",
    )
    .unwrap();
    assert!(
        load_keys(&junk)
            .unwrap_err()
            .contains("holds no certificate")
    );
    let garbage = dir.join("garbage.crt");
    std::fs::write(&garbage, b"\x30\x03\x02\x01\x01").unwrap();
    assert!(
        load_keys(&garbage)
            .unwrap_err()
            .contains("no RSA public key")
    );
    let signer = Signer::shared(ISSUER).unwrap();
    let bag = dir.join("bag.pem");
    std::fs::write(
        &bag,
        format!(
            "\u{feff}Bag Attributes\nsubject=CN = x\n{}",
            signer.certificate_pem()
        ),
    )
    .unwrap();
    assert_eq!(load_keys(&bag).unwrap().len(), 1);
    let der = dir.join("so.der.crt");
    std::fs::write(
        &der,
        pem::parse(signer.certificate_pem()).unwrap().contents(),
    )
    .unwrap();
    assert_eq!(load_keys(&der).unwrap().len(), 1);
    assert!(
        load_keys(&dir.join("missing.crt"))
            .unwrap_err()
            .contains("cannot read")
    );
}

#[test]
fn a_jwks_yields_its_rs256_signing_keys_and_skips_the_rest() {
    let signer = Signer::shared(ISSUER).unwrap();
    let mut good = serde_json::to_value(signer.jwks()).unwrap()["keys"][0].clone();
    good["alg"] = json!("RS256");
    let mut enc = good.clone();
    enc["use"] = json!("enc");
    enc["kid"] = json!("enc");
    let mut ps = good.clone();
    ps["alg"] = json!("PS256");
    ps["kid"] = json!("ps");
    let doc = json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA", "kid": "ec"},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        {"kty": "OKP", "crv": "X448", "x": "AAAA"},
        enc, ps, good
    ]});
    let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
    assert_eq!(keys.len(), 1, "{:?}", keys.keys().collect::<Vec<_>>());
    assert!(keys.contains_key(signer.kid()));
    assert!(parse_jwks(b"[]").is_err());
}

#[test]
fn seen_tokens_are_remembered_until_expiry_within_a_bound() {
    let seen = SeenTokens::new(3);
    let now = SystemTime::now();
    let t = unix_seconds(now);
    let used = |token: &str, note: u64, forget_after: u64| TokenUse {
        digest: token_digest(token),
        note,
        forget_after,
    };
    assert_eq!(seen.first_use(used("a", 1, t + 100), now), Seen::First(now));
    assert_eq!(seen.first_use(used("b", 1, t + 50), now), Seen::First(now));
    assert_eq!(seen.first_use(used("c", 1, t + 200), now), Seen::First(now));
    // Full of usable tokens: nothing is forgotten early.
    assert_eq!(seen.first_use(used("d", 1, t + 300), now), Seen::Full);
    assert_eq!(seen.len(), 3);
    // Once "b" and "a" expire there is room again, and they are
    // forgotten (the verifier refuses them as expired by then).
    let later = now + Duration::from_secs(150);
    assert_eq!(
        seen.first_use(used("d", 1, t + 400), later),
        Seen::First(later)
    );
    assert_eq!(
        seen.first_use(used("a", 1, t + 500), later),
        Seen::First(later)
    );
}

#[test]
fn a_retry_is_not_a_replay() {
    let seen = SeenTokens::new(10);
    let first = SystemTime::now();
    let later = first + Duration::from_secs(3);
    let t = unix_seconds(first);
    let token = TokenUse {
        digest: token_digest("tok"),
        note: 42,
        forget_after: t + 100,
    };
    assert_eq!(seen.first_use(token, first), Seen::First(first));
    // Not applied yet (the first attempt failed, or is still under way):
    // the same notification goes ahead, as received the first time.
    assert_eq!(seen.first_use(token, later), Seen::Retry(first));
    assert!(
        seen.remembered(later).is_empty(),
        "pending tokens are not saved"
    );
    // Another notification with the same token is a replay, applied or not.
    let other = TokenUse { note: 43, ..token };
    assert_eq!(seen.first_use(other, later), Seen::Replay);
    seen.applied(token.digest);
    assert_eq!(seen.first_use(token, later), Seen::Applied);
    assert_eq!(seen.first_use(other, later), Seen::Replay);
    let kept = seen.remembered(later);
    assert_eq!(
        kept,
        [Remembered {
            digest: token.digest,
            forget_after: t + 100,
            note: 42
        }]
    );
    // Restored in another process: applied, with what it carried.
    let again = SeenTokens::new(10);
    assert_eq!(again.restore(kept, later), 1);
    assert_eq!(again.first_use(token, later), Seen::Applied);
    assert_eq!(again.first_use(other, later), Seen::Replay);
    // Kept by a build that did not record the notification: a retry.
    let old = SeenTokens::new(10);
    old.restore(
        [Remembered {
            digest: token.digest,
            forget_after: t + 100,
            note: 0,
        }],
        later,
    );
    assert_eq!(old.first_use(token, later), Seen::Applied);
}

#[test]
fn digests_separate_their_parts() {
    assert_ne!(digest64(&[b"ab", b"c"]), digest64(&[b"a", b"bc"]));
    assert_eq!(digest64(&[b"tok"]), token_digest("tok"));
    assert_ne!(digest64(&[b""]), 0);
}
