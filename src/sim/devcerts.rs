//! `tenant-status dev-certs`: a throwaway CA with a server certificate (for
//! localhost and 127.0.0.1) and a client certificate, to try TLS and mTLS
//! with grpcurl. Also what the tests use. Not for production.

use std::path::Path;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM texts of a CA, a server and a client certificate with their keys.
pub struct DevCerts {
    pub ca_pem: String,
    pub server_pem: String,
    pub server_key: String,
    pub client_pem: String,
    pub client_key: String,
}

impl DevCerts {
    pub fn generate() -> anyhow::Result<Self> {
        let ca_key = KeyPair::generate().context("CA key")?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "tenant-status dev CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).context("self-signing the CA")?;
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().context("leaf key")?;
            let mut p = CertificateParams::new(names).context("leaf parameters")?;
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, &issuer).context("signing a leaf")?;
            anyhow::Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_pem, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            "tenant-status",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_pem, client_key) = leaf(
            vec!["client.tenant-status.test".into()],
            "a tenant-status client",
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            server_pem,
            server_key,
            client_pem,
            client_key,
        })
    }

    /// Writes ca.pem, server.pem, server.key, client.pem, client.key.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, text, private) in [
            ("ca.pem", &self.ca_pem, false),
            ("server.pem", &self.server_pem, false),
            ("server.key", &self.server_key, true),
            ("client.pem", &self.client_pem, false),
            ("client.key", &self.client_key, true),
        ] {
            let path = dir.join(name);
            write_file(&path, text, private)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

/// Writes `text` to `path`; a private key readable by its owner only
/// (0600), from the moment the file exists, even over an older file.
fn write_file(path: &Path, text: &str, private: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path)?;
        // `mode` applies only to a file it creates.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        return (&file).write_all(text.as_bytes());
    }
    let _ = private;
    options.open(path)?.write_all(text.as_bytes())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn private_keys_are_readable_by_their_owner_only() {
        let dir = std::env::temp_dir().join(format!("ts-devcerts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // An older key left world-readable is tightened too.
        std::fs::write(dir.join("server.key"), "old").unwrap();
        std::fs::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        DevCerts::generate().unwrap().write(&dir).unwrap();
        let mode = |name: &str| {
            std::fs::metadata(dir.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("server.key"), 0o600);
        assert_eq!(mode("client.key"), 0o600);
        assert_eq!(mode("ca.pem") & 0o600, 0o600, "certificates stay readable");
        assert!(
            std::fs::read_to_string(dir.join("server.key"))
                .unwrap()
                .contains("PRIVATE KEY")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
