//! The domain: context identifiers, states and tenant records.
//!
//! Nothing here knows about gRPC, HTTP or the network; the grpc module maps
//! these types to protobuf and the superoffice module parses into them.

use std::{borrow::Borrow, fmt, sync::Arc, time::SystemTime};

/// The longest context identifier accepted. SuperOffice's are like
/// `Cust12345`; the bound keeps hostile input out of URLs, logs and memory.
pub(crate) const MAX_CONTEXT_ID_LEN: usize = 64;

/// A validated SuperOffice context identifier (`Cust12345`).
///
/// Only ASCII letters, digits, `-` and `_`, 1 to 64 of them, so that a value
/// of this type can be put into a URL path or a log line as it is. Cloning is
/// cheap (a shared `str`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContextId(Arc<str>);

/// Why a string is not a context identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidContextId {
    #[error("the context identifier is empty")]
    Empty,
    #[error("the context identifier is {0} characters long; at most 64 are allowed")]
    TooLong(usize),
    #[error(
        "the context identifier may hold only ASCII letters, digits, '-' and '_' (found {0:?} at position {1})"
    )]
    BadCharacter(char, usize),
}

impl ContextId {
    pub fn parse(s: &str) -> Result<Self, InvalidContextId> {
        if s.is_empty() {
            return Err(InvalidContextId::Empty);
        }
        let chars = s.chars().count();
        if chars > MAX_CONTEXT_ID_LEN {
            return Err(InvalidContextId::TooLong(chars));
        }
        if let Some((i, c)) = s
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(InvalidContextId::BadCharacter(c, i));
        }
        Ok(Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContextId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ContextId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::ops::Deref for ContextId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ContextId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for ContextId {
    type Err = InvalidContextId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A tenant's state, with SuperOffice's own numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(i32)]
pub enum TenantState {
    #[default]
    Unknown = 0,
    Provisioning = 1,
    Running = 2,
    Deleted = 3,
    Suspended = 4,
    OnlineMaintenance = 5,
    OfflineMaintenance = 6,
    ProvisioningFailed = 8,
    Deleting = 10,
    DeleteFailed = 11,
    MigrationPending = 12,
}

impl TenantState {
    pub const ALL: [TenantState; 11] = [
        Self::Unknown,
        Self::Provisioning,
        Self::Running,
        Self::Deleted,
        Self::Suspended,
        Self::OnlineMaintenance,
        Self::OfflineMaintenance,
        Self::ProvisioningFailed,
        Self::Deleting,
        Self::DeleteFailed,
        Self::MigrationPending,
    ];

    /// SuperOffice's name of the state, as the state API sends it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "Unknown",
            Self::Provisioning => "Provisioning",
            Self::Running => "Running",
            Self::Deleted => "Deleted",
            Self::Suspended => "Suspended",
            Self::OnlineMaintenance => "OnlineMaintenance",
            Self::OfflineMaintenance => "OfflineMaintenance",
            Self::ProvisioningFailed => "ProvisioningFailed",
            Self::Deleting => "Deleting",
            Self::DeleteFailed => "DeleteFailed",
            Self::MigrationPending => "MigrationPending",
        }
    }

    /// Parses SuperOffice's name of a state, ignoring case.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    /// The state with SuperOffice's number.
    pub fn from_number(n: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as i64 == n)
    }

    /// Whether the tenant's API takes calls in this state. SuperOffice
    /// documents exactly Running and OnlineMaintenance as running.
    pub fn is_running(self) -> bool {
        matches!(self, Self::Running | Self::OnlineMaintenance)
    }
}

impl fmt::Display for TenantState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What produced a record's latest meaningful change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChangeSource {
    #[default]
    Poll,
    Notification,
}

/// The kind of a SuperOffice state-change notification, with SuperOffice's
/// numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    Upgrade = 0,
    BackupRestored = 1,
    Suspend = 2,
    Resume = 3,
    Delete = 4,
    Move = 5,
}

/// The last notification received about a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationInfo {
    pub change_type: ChangeType,
    pub version_name: String,
    pub file_version: String,
    /// With Move, the new host (`sod3.superoffice.com`); empty otherwise.
    pub public_endpoint: String,
    pub received_at: SystemTime,
}

impl ChangeType {
    /// The change type with SuperOffice's number.
    pub fn from_number(n: i64) -> Option<Self> {
        Some(match n {
            0 => Self::Upgrade,
            1 => Self::BackupRestored,
            2 => Self::Suspend,
            3 => Self::Resume,
            4 => Self::Delete,
            5 => Self::Move,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Upgrade => "Upgrade",
            Self::BackupRestored => "BackupRestored",
            Self::Suspend => "Suspend",
            Self::Resume => "Resume",
            Self::Delete => "Delete",
            Self::Move => "Move",
        }
    }
}

/// `url` with its host replaced by `host` (a Move to another endpoint
/// host). When `url` is empty or unusable, SuperOffice's layout is assumed:
/// `https://{host}/{ctx}{suffix}`.
pub(crate) fn moved_url(url: &str, host: &str, ctx: &ContextId, suffix: &str) -> String {
    if let Ok(mut u) = url::Url::parse(url)
        && u.has_host()
        && u.set_host(Some(host)).is_ok()
    {
        return u.to_string();
    }
    format!("https://{host}/{ctx}{suffix}")
}

/// What SuperOffice's state API said about a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub state: TenantState,
    /// Empty when SuperOffice gave none.
    pub endpoint: String,
    /// Empty when SuperOffice gave none.
    pub api: String,
    /// Empty when SuperOffice gave none.
    pub version: String,
    pub valid_until: Option<SystemTime>,
}

/// Everything known about one tenant. Records are immutable and shared
/// (`Arc`); an update makes a new one.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantRecord {
    pub context_identifier: ContextId,
    pub state: TenantState,
    pub endpoint: String,
    pub api: String,
    pub version: String,
    pub valid_until: Option<SystemTime>,
    pub observed_at: SystemTime,
    /// The store revision of the latest meaningful change.
    pub revision: u64,
    /// When the latest meaningful change happened.
    pub changed_at: SystemTime,
    pub source: ChangeSource,
    pub last_notification: Option<NotificationInfo>,
    /// SuperOffice could not be reached and `valid_until` has passed.
    pub stale: bool,
    /// Why the last poll failed; empty after a successful one.
    pub last_error: String,
    /// Set while the state or endpoint a notification implies holds
    /// against polls that still answer what SuperOffice said before it.
    pub hold: Option<Hold>,
    /// The record's encoded form, made by serve/ the first time it is
    /// sent (`core::encoded`); empty in a clone.
    pub encoded: crate::core::encoded::EncodedOnce,
}

/// A notification's implied change, holding against lagging polls.
///
/// SuperOffice notifies when a tenant "is about to be" upgraded (and so on):
/// its state API may go on answering what it said before for a while. Such
/// an answer is lagging news, not a contradiction: it refreshes the record
/// but does not undo the notification. The hold ends when the state API
/// answers anything else (it confirms the change, or has moved on), or at
/// `until`.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    /// The latest the hold lasts (`--notification-hold` after the first
    /// notification of a run of them).
    pub until: SystemTime,
    /// What the record said before the notification: an answer with this
    /// state and endpoint is lagging.
    pub prior_state: TenantState,
    pub prior_endpoint: String,
}

impl Hold {
    /// Whether `answer` only repeats what SuperOffice said before the
    /// notification, while the hold lasts. `holder` is the record the hold
    /// is on: what the notification implied.
    ///
    /// A tenant first learned from the notification has no "before"
    /// (`prior_state` UNKNOWN): any answer that does not confirm what the
    /// notification implied (its state, and for a Move its endpoint) is
    /// lagging then, so the hold does not depend on whether the tenant was
    /// tracked before.
    pub fn is_lagging(&self, answer: &Observation, holder: &TenantRecord, now: SystemTime) -> bool {
        if now >= self.until {
            return false;
        }
        if self.prior_state == TenantState::Unknown && self.prior_endpoint.is_empty() {
            let confirms_state =
                holder.state == TenantState::Unknown || answer.state == holder.state;
            let host = |u: &str| {
                url::Url::parse(u)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_owned))
            };
            let confirms_endpoint =
                holder.endpoint.is_empty() || host(&answer.endpoint) == host(&holder.endpoint);
            return !(confirms_state && confirms_endpoint);
        }
        answer.state == self.prior_state && answer.endpoint == self.prior_endpoint
    }
}

impl TenantRecord {
    /// A tenant just tracked, of which nothing is known yet: UNKNOWN, no
    /// addresses, not yet given a revision.
    pub fn unknown(ctx: &ContextId, now: SystemTime) -> Self {
        Self {
            context_identifier: ctx.clone(),
            state: TenantState::Unknown,
            endpoint: String::new(),
            api: String::new(),
            version: String::new(),
            valid_until: None,
            observed_at: now,
            revision: 0,
            changed_at: now,
            source: ChangeSource::Poll,
            last_notification: None,
            stale: false,
            last_error: String::new(),
            hold: None,
            encoded: Default::default(),
        }
    }

    /// This record, stale with why it could not be refreshed: a tenant
    /// tracked for a watcher whose first fetch failed.
    pub fn failed(self, error: String) -> Self {
        Self {
            stale: true,
            last_error: error,
            ..self
        }
    }

    pub fn is_running(&self) -> bool {
        self.state.is_running()
    }

    /// Whether `other` differs from `self` in anything a client acts on.
    /// observed_at, valid_until, the error text and the end of a hold are
    /// not: a poll that confirms the same state must not wake every
    /// watcher.
    pub fn meaningfully_differs(&self, other: &TenantRecord) -> bool {
        self.state != other.state
            || self.endpoint != other.endpoint
            || self.api != other.api
            || self.version != other.version
            || self.stale != other.stale
            || self.last_notification != other.last_notification
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_ids_are_validated() {
        assert!(ContextId::parse("Cust12345").is_ok());
        assert!(ContextId::parse("a-b_C9").is_ok());
        assert_eq!(ContextId::parse(""), Err(InvalidContextId::Empty));
        assert_eq!(
            ContextId::parse(&"x".repeat(65)),
            Err(InvalidContextId::TooLong(65))
        );
        assert!(ContextId::parse(&"x".repeat(64)).is_ok());
        for bad in [
            "Cust/1", "..", "a%2F", "a b", "Cüst", "a\n", "a?b", "a#", "a.b",
        ] {
            assert!(
                matches!(
                    ContextId::parse(bad),
                    Err(InvalidContextId::BadCharacter(..))
                ),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn state_names_and_numbers_round_trip() {
        for s in TenantState::ALL {
            assert_eq!(TenantState::from_name(s.name()), Some(s));
            assert_eq!(TenantState::from_number(s as i64), Some(s));
        }
        assert_eq!(
            TenantState::from_name("onlinemaintenance"),
            Some(TenantState::OnlineMaintenance)
        );
        assert_eq!(TenantState::from_name("Hibernating"), None);
        assert_eq!(TenantState::from_number(7), None);
    }

    #[test]
    fn exactly_running_and_online_maintenance_are_running() {
        let running: Vec<_> = TenantState::ALL
            .into_iter()
            .filter(|s| s.is_running())
            .collect();
        assert_eq!(
            running,
            vec![TenantState::Running, TenantState::OnlineMaintenance]
        );
    }

    #[test]
    fn a_move_replaces_the_host_and_keeps_the_path() {
        let ctx = ContextId::parse("Cust1").unwrap();
        assert_eq!(
            moved_url(
                "https://sod2.superoffice.com/Cust1/api",
                "sod3.superoffice.com",
                &ctx,
                "/api"
            ),
            "https://sod3.superoffice.com/Cust1/api"
        );
        assert_eq!(
            moved_url("", "sod3.superoffice.com", &ctx, ""),
            "https://sod3.superoffice.com/Cust1"
        );
        for n in 0..=5 {
            assert_eq!(ChangeType::from_number(n).map(|c| c as i64), Some(n));
        }
        assert_eq!(ChangeType::from_number(6), None);
        assert_eq!(ChangeType::from_number(-1), None);
    }
}
