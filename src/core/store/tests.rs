//! The store's tests: revisions, refreshes, failures, notifications, pages.

use super::*;
use std::time::Duration;

fn ctx(s: &str) -> ContextId {
    ContextId::parse(s).unwrap()
}

fn running(endpoint: &str) -> PollResult {
    PollResult::Observed(Observation {
        state: TenantState::Running,
        endpoint: endpoint.into(),
        api: format!("{endpoint}/api"),
        version: "v1".into(),
        valid_until: Some(SystemTime::now() + Duration::from_secs(60)),
    })
}

#[test]
fn a_confirming_poll_refreshes_without_a_revision() {
    let store = Store::new();
    let c = ctx("Cust1");
    let t0 = SystemTime::now();
    let a = store.apply_poll(&c, running("https://sod2"), t0).unwrap();
    assert!(a.changed);
    assert_eq!(a.record.revision, 1);
    let t1 = t0 + Duration::from_secs(5);
    let b = store.apply_poll(&c, running("https://sod2"), t1).unwrap();
    assert!(!b.changed);
    assert_eq!(b.record.revision, 1);
    assert_eq!(b.record.observed_at, t1);
    assert_eq!(b.record.changed_at, t0);
    let c2 = store.apply_poll(&c, running("https://sod3"), t1).unwrap();
    assert!(c2.changed, "an endpoint move is meaningful");
    assert_eq!(c2.record.revision, 2);
    assert_eq!(store.revision(), 2);
}

#[test]
fn revisions_after_a_restart_are_above_those_before_it() {
    let before = Store::starting_from_clock();
    let c = ctx("Cust1");
    for i in 0..1000 {
        before.apply_poll(&c, running(&format!("https://{i}")), SystemTime::now());
    }
    let after = Store::starting_from_clock();
    let a = after
        .apply_poll(&c, running("https://x"), SystemTime::now())
        .unwrap();
    assert!(
        a.record.revision > before.revision(),
        "{} <= {}",
        a.record.revision,
        before.revision()
    );
}

#[test]
fn track_unknown_never_overwrites_a_known_tenant() {
    let store = Store::new();
    let c = ctx("Cust1");
    store.apply_poll(&c, running("https://a"), SystemTime::now());
    assert!(store.track_unknown(&c, SystemTime::now()).is_none());
    assert_eq!(store.get("Cust1").unwrap().state, TenantState::Running);
    let u = store
        .track_unknown(&ctx("Cust2"), SystemTime::now())
        .unwrap();
    assert_eq!(u.record.state, TenantState::Unknown);
}

#[test]
fn failures_keep_the_state_and_mark_stale_only_after_valid_until() {
    let store = Store::new();
    let c = ctx("Cust1");
    let now = SystemTime::now();
    assert!(
        store
            .apply_poll(&c, PollResult::Failed("down".into()), now)
            .is_none(),
        "a failure never creates a record"
    );
    store.apply_poll(&c, running("https://sod2"), now).unwrap();
    let a = store
        .apply_poll(&c, PollResult::Failed("timed out".into()), now)
        .unwrap();
    assert!(!a.changed);
    assert!(!a.record.stale);
    assert_eq!(a.record.last_error, "timed out");
    assert_eq!(a.record.state, TenantState::Running);
    let later = now + Duration::from_secs(61);
    let b = store
        .apply_poll(&c, PollResult::Failed("timed out".into()), later)
        .unwrap();
    assert!(b.changed, "turning stale is meaningful");
    assert!(b.record.stale);
    assert_eq!(b.record.state, TenantState::Running);
    let c3 = store
        .apply_poll(&c, running("https://sod2"), later)
        .unwrap();
    assert!(c3.changed && !c3.record.stale && c3.record.last_error.is_empty());
}

#[test]
fn list_pages_in_identifier_order_with_a_state_filter() {
    let store = Store::new();
    let now = SystemTime::now();
    for i in (0..25).rev() {
        let c = ctx(&format!("Cust{i:03}"));
        if i % 5 == 0 {
            store.apply_poll(&c, PollResult::NotFound, now);
        } else {
            store.apply_poll(&c, running("https://x"), now);
        }
    }
    let (p1, more) = store.list("", &[], 10);
    assert!(more);
    let names: Vec<_> = p1
        .iter()
        .map(|r| r.context_identifier.to_string())
        .collect();
    assert_eq!(names[0], "Cust000");
    assert_eq!(names[9], "Cust009");
    let (p3, more) = store.list("Cust019", &[], 10);
    assert!(!more);
    assert_eq!(p3.len(), 5);
    let (unknown, more) = store.list("", &[TenantState::Unknown], 100);
    assert!(!more);
    assert_eq!(unknown.len(), 5);
}

fn note(change_type: ChangeType, at: SystemTime) -> NotificationInfo {
    NotificationInfo {
        change_type,
        version_name: String::new(),
        file_version: String::new(),
        public_endpoint: String::new(),
        received_at: at,
    }
}

#[test]
fn an_answer_asked_before_a_notification_does_not_undo_it() {
    let store = Store::new();
    let c = ctx("Cust1");
    let t0 = SystemTime::now();
    store.apply_poll(&c, running("https://sod2"), t0);
    let t1 = t0 + Duration::from_secs(1);
    let t2 = t0 + Duration::from_secs(2);
    store.apply_notification(&c, note(ChangeType::Suspend, t1), t1);
    let r = store.get("Cust1").unwrap();
    assert_eq!(r.state, TenantState::Suspended);
    assert_eq!(
        r.valid_until, None,
        "the old ValidUntil vouched for Running"
    );
    // Asked at t0, answered after the notification: older news.
    assert!(matches!(
        store.apply_poll_asked_at(&c, running("https://sod2"), t0, t2),
        PollApplied::Superseded(r) if r.state == TenantState::Suspended
    ));
    assert_eq!(store.get("Cust1").unwrap().state, TenantState::Suspended);
    // Asked after it: the poll has the last word.
    let a = store
        .apply_poll_asked_at(&c, running("https://sod2"), t2, t2)
        .taken()
        .unwrap();
    assert_eq!(a.record.state, TenantState::Running);
}

#[test]
fn a_deleted_tenant_superoffice_no_longer_knows_stays_deleted() {
    let store = Store::new();
    let c = ctx("Cust1");
    let t0 = SystemTime::now();
    store.apply_notification(&c, note(ChangeType::Delete, t0), t0);
    let t1 = t0 + Duration::from_secs(1);
    store.apply_poll(&c, PollResult::NotFound, t1);
    assert_eq!(store.get("Cust1").unwrap().state, TenantState::Deleted);
    assert_eq!(
        store.remove_if(&c, |r| r.state == TenantState::Running),
        None
    );
    assert!(
        store
            .remove_if(&c, |r| r.state == TenantState::Deleted)
            .is_some()
    );
    assert!(!store.contains("Cust1"));
}
