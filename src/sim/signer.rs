//! A stand-in for SuperOffice's signing certificate: an RSA key made on the
//! spot, its self-signed certificate, its JWKS, and RS256 tokens shaped like
//! the ones SuperOffice puts in state-change notifications.
//!
//! The simulated SuperOffice signs its notifications with it (the demo), and
//! the tests make every kind of good and bad token with it. Nothing in the
//! service trusts it unless configured to, like any other key.

use std::{
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use anyhow::Context;
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{Jwk, JwkSet},
};
use serde_json::json;

use crate::token::{CONTEXT_CLAIM, unix_seconds};

/// An RSA-2048 key with its certificate, signing RS256 tokens for one issuer.
#[derive(Clone)]
pub struct Signer {
    issuer: String,
    kid: String,
    key: EncodingKey,
    certificate_pem: String,
    public_key_pem: String,
    private_key_pem: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("Signer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer with a new RSA key.
    pub fn generate(issuer: &str) -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .context("generating an RSA key")?;
        Self::from_key(issuer, key)
    }

    /// A signer with the process's shared key: RSA key generation takes a
    /// while in unoptimised builds, and most tests need one key, not many.
    pub fn shared(issuer: &str) -> anyhow::Result<Self> {
        static KEY: OnceLock<String> = OnceLock::new();
        let pem = match KEY.get() {
            Some(pem) => pem.clone(),
            None => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
                    .context("generating an RSA key")?;
                KEY.get_or_init(|| key.serialize_pem()).clone()
            }
        };
        let key = rcgen::KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256)
            .context("loading the shared RSA key")?;
        Self::from_key(issuer, key)
    }

    fn from_key(issuer: &str, key: rcgen::KeyPair) -> anyhow::Result<Self> {
        let mut params = rcgen::CertificateParams::new(vec!["superoffice.test".to_owned()])
            .context("certificate parameters")?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            "Simulated SuperOffice Federated Login",
        );
        let certificate = params.self_signed(&key).context("self-signing")?;
        let private_key_pem = key.serialize_pem();
        let encoding = EncodingKey::from_rsa_pem(private_key_pem.as_bytes())
            .context("loading the RSA key for signing")?;
        let jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256)
            .context("describing the key as a JWK")?;
        // A key id derived from the key, as a JWKS publisher would.
        let kid = jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256);
        Ok(Self {
            issuer: issuer.trim_end_matches('/').to_owned(),
            kid,
            key: encoding,
            certificate_pem: certificate.pem(),
            public_key_pem: key.public_key_pem(),
            private_key_pem,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The key id tokens carry in their header and the JWKS publishes.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The self-signed certificate, PEM, as SuperOffice distributes its own.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The bare public key, PEM (SubjectPublicKeyInfo).
    pub fn public_key_pem(&self) -> &str {
        &self.public_key_pem
    }

    /// The private key, PKCS#8 PEM (for tests that sign by other means).
    pub fn private_key_pem(&self) -> &str {
        &self.private_key_pem
    }

    /// The JWKS document that publishes this key.
    pub fn jwks(&self) -> JwkSet {
        let mut jwk =
            Jwk::from_encoding_key(&self.key, Algorithm::RS256).expect("an RSA key makes a JWK");
        jwk.common.key_id = Some(self.kid.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        JwkSet { keys: vec![jwk] }
    }

    /// Signs `claims` with RS256 and this key's id in the header.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        self.sign_with_header(&header, claims)
    }

    /// Signs `claims` with a header of the caller's making (its `alg` must
    /// be an RSA one; forgeries of other kinds are made by hand).
    pub fn sign_with_header(&self, header: &Header, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(header, claims, &self.key).expect("RSA signing does not fail")
    }

    /// The claims of a notification token for `ctx`, valid from now for
    /// `lifetime`.
    pub fn notification_claims(&self, ctx: &str, lifetime: Duration) -> serde_json::Value {
        let now = unix_seconds(SystemTime::now());
        json!({
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime.as_secs(),
            "jti": format!("{:032x}", rand::random::<u128>()),
            CONTEXT_CLAIM: ctx,
        })
    }

    /// A valid notification token for `ctx`.
    pub fn notification_token(&self, ctx: &str, lifetime: Duration) -> String {
        self.sign(&self.notification_claims(ctx, lifetime))
    }
}
