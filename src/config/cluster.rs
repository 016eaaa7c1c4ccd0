//! The replicas' settings: NATS servers, credentials, this replica's name
//! and the lease TTL, checked before anything connects.

use std::time::Duration;

use rand::Rng;

use super::{ConfigError, bad, flags::ClusterArgs};
use crate::cluster::ClusterConfig;
use crate::files::read_text;

impl ClusterArgs {
    /// `None` without `--nats-url`: the process is alone.
    pub(super) fn validate(&self) -> Result<Option<ClusterConfig>, ConfigError> {
        let urls: Vec<String> = self
            .nats_urls
            .iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Ok(None);
        }
        for u in &urls {
            if u.parse::<async_nats::ServerAddr>().is_err() {
                return Err(bad(
                    "--nats-url",
                    format!("{u:?} is not a NATS server address such as nats://127.0.0.1:4222"),
                ));
            }
        }
        let replica_id = match &self.replica_id {
            Some(id) => id.trim().to_owned(),
            None => default_replica_id(),
        };
        if replica_id.is_empty()
            || replica_id.len() > 64
            || !replica_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad(
                "--replica-id",
                format!("{replica_id:?} must be 1 to 64 ASCII letters, digits, '-' or '_'"),
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.lease_ttl) {
            return Err(bad("--lease-ttl", "must be from 1s to 10m"));
        }
        // Checked here, not by clap: either may come from the config file,
        // which clap sees as a default.
        match (&self.nats_user, &self.nats_password_file) {
            (Some(_), None) => {
                return Err(bad("--nats-user", "needs --nats-password-file too"));
            }
            (None, Some(_)) => {
                return Err(bad("--nats-password-file", "needs --nats-user too"));
            }
            _ => {}
        }
        let password = match &self.nats_password_file {
            Some(path) => {
                let p = read_text(path).map_err(|e| {
                    bad(
                        "--nats-password-file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let p = p.trim_end_matches(['\r', '\n']).to_owned();
                if p.is_empty() {
                    return Err(bad(
                        "--nats-password-file",
                        format!("{} is empty", path.display()),
                    ));
                }
                Some(p)
            }
            None => None,
        };
        for (setting, file) in [
            ("--nats-creds-file", &self.nats_creds_file),
            ("--nats-ca-file", &self.nats_ca_file),
        ] {
            if let Some(path) = file
                && let Err(e) = std::fs::metadata(path)
            {
                return Err(bad(setting, format!("cannot read {}: {e}", path.display())));
            }
        }
        let bucket = self.nats_bucket.trim();
        if bucket.is_empty()
            || bucket.len() > 48
            || !bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad(
                "--nats-bucket",
                format!("{bucket:?} must be 1 to 48 ASCII letters, digits, '-' or '_'"),
            ));
        }
        if !(1..=5).contains(&self.nats_bucket_replicas) {
            return Err(bad("--nats-bucket-replicas", "must be from 1 to 5"));
        }
        Ok(Some(ClusterConfig {
            urls,
            replica_id,
            lease_ttl: self.lease_ttl,
            creds_file: self.nats_creds_file.clone(),
            user: self.nats_user.clone(),
            password,
            ca_file: self.nats_ca_file.clone(),
            bucket: bucket.to_owned(),
            bucket_replicas: self.nats_bucket_replicas,
        }))
    }
}

/// The host name (a pod's name in Kubernetes) and a random suffix, so that
/// two processes on one host differ.
fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    let host = if host.is_empty() {
        "replica".to_owned()
    } else {
        host
    };
    format!("{host}-{:06x}", rand::rng().random_range(0..0x100_0000u32))
}
