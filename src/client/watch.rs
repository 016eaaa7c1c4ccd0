//! Reconnect and resume, as the proto asks a watcher to: remember the
//! largest revision received on the stream (of any event), and when the
//! stream breaks open it again with `since_revision` set to it. A RESET
//! from the server (it cannot serve that revision without a gap) means the
//! complete snapshot that follows replaces everything: the remembered
//! revision starts again from it.

use std::{io, time::Duration};

use tonic::{Code, Status, Streaming};

use super::{Client, Failure};
use crate::pb;

/// The first wait before reconnecting, and the longest.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// How one stream ended.
enum Ended {
    /// The consumer could not take more (standard output closed).
    Consumer,
    /// The server ended the stream without a status.
    Closed,
    Status(Status),
}

/// Errors worth reconnecting for once a stream has been open: the server
/// went away, restarted, or the connection broke.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
    )
}

/// The revision to resume from after `ev`, given the one before.
pub(super) fn resume_from(since: u64, ev: &pb::WatchTenantResponse) -> u64 {
    if ev.r#type == pb::WatchEventType::Reset as i32 {
        // What we held is void; the snapshot that follows sets it anew.
        0
    } else {
        since.max(ev.revision)
    }
}

/// Watches `names` (none: every tenant) from `since` until the consumer
/// stops taking events (`Ok`) or an error that reconnecting cannot mend.
/// The first open must succeed, so a wrong address or a refused request
/// fails at once; after that, breaks are mended by reconnecting, each
/// `note`d, waits growing from 250 ms to 10 s and starting over once a
/// stream is synced again.
pub(super) async fn run(
    mut client: Client,
    names: Vec<String>,
    mut since: u64,
    mut on_event: impl FnMut(&pb::WatchTenantResponse) -> io::Result<()>,
    mut note: impl FnMut(&str),
) -> Result<(), Failure> {
    let mut opened_once = false;
    let mut backoff = BACKOFF_FIRST;
    loop {
        let request = pb::WatchTenantRequest {
            context_identifiers: names.clone(),
            since_revision: since,
        };
        let ended = match client.watch_tenant(request).await {
            Ok(response) => {
                opened_once = true;
                read(
                    response.into_inner(),
                    &mut since,
                    &mut backoff,
                    &mut on_event,
                )
                .await
            }
            Err(status) => Ended::Status(status),
        };
        let why = match ended {
            Ended::Consumer => return Ok(()),
            Ended::Status(s) if !opened_once || !retryable(s.code()) => {
                return Err(Failure::from_status("watch", &s));
            }
            Ended::Status(s) => format!("{} ({})", s.message(), crate::pb::code_name(s.code())),
            Ended::Closed => "the server ended the stream".to_owned(),
        };
        let wait = backoff.mul_f64(rand::random_range(0.5..=1.0));
        note(&format!(
            "watch interrupted: {why}; reconnecting in {} to resume from revision {since}",
            humantime::format_duration(Duration::from_millis(wait.as_millis() as u64))
        ));
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn read(
    mut stream: Streaming<pb::WatchTenantResponse>,
    since: &mut u64,
    backoff: &mut Duration,
    on_event: &mut impl FnMut(&pb::WatchTenantResponse) -> io::Result<()>,
) -> Ended {
    loop {
        match stream.message().await {
            Ok(Some(ev)) => {
                *since = resume_from(*since, &ev);
                if ev.r#type == pb::WatchEventType::Synced as i32 {
                    *backoff = BACKOFF_FIRST;
                }
                if on_event(&ev).is_err() {
                    return Ended::Consumer;
                }
            }
            Ok(None) => return Ended::Closed,
            Err(status) => return Ended::Status(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: pb::WatchEventType, revision: u64) -> pb::WatchTenantResponse {
        pb::WatchTenantResponse {
            r#type: kind as i32,
            revision,
            ..Default::default()
        }
    }

    #[test]
    fn the_resume_point_is_the_largest_revision_and_a_reset_voids_it() {
        use pb::WatchEventType as K;
        let mut since = 0;
        for (kind, rev) in [
            (K::Snapshot, 5),
            (K::Snapshot, 9),
            (K::Synced, 9),
            (K::Heartbeat, 12),
            (K::Removed, 11),
        ] {
            since = resume_from(since, &event(kind, rev));
        }
        assert_eq!(since, 12, "any event's revision counts, heartbeats too");
        since = resume_from(since, &event(K::Reset, 0));
        assert_eq!(since, 0);
        since = resume_from(since, &event(K::Snapshot, 3));
        assert_eq!(
            since, 3,
            "after a RESET, an older instance's revisions are void"
        );
    }
}
