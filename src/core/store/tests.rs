//! The store's tests: revisions, refreshes, failures, notifications, pages.

use super::*;
use crate::core::tenant::{ChangeType, NotificationInfo};
use std::time::Duration;

/// A valid identifier.
pub(crate) fn ctx(s: &str) -> ContextId {
    ContextId::parse(s).unwrap()
}

/// SuperOffice's answer that the tenant runs at `endpoint`, valid a minute.
pub(crate) fn running(endpoint: &str) -> PollResult {
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
    // Without a hold, so that only the time of asking decides.
    let store = Store::new().with_notification_hold(Duration::ZERO);
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

fn answer(state: TenantState, endpoint: &str) -> PollResult {
    PollResult::Observed(Observation {
        state,
        endpoint: endpoint.into(),
        api: format!("{endpoint}/api"),
        version: "v1".into(),
        valid_until: None,
    })
}

/// An upgrade notified while the state API still answers Running: the
/// lagging answers refresh the record but do not undo it; the first that
/// confirms it (or says anything else) ends the hold.
#[test]
fn a_notified_upgrade_holds_against_lagging_polls_until_confirmed() {
    let store = Store::new();
    let c = ctx("Cust1");
    let t0 = SystemTime::now();
    store.apply_poll(&c, answer(TenantState::Running, "https://sod2"), t0);
    let t1 = t0 + Duration::from_secs(1);
    let n = store.apply_notification(&c, note(ChangeType::Upgrade, t1), t1);
    let hold = n.record.hold.clone().expect("the upgrade holds");
    assert_eq!(hold.until, t1 + DEFAULT_NOTIFICATION_HOLD);
    assert_eq!(hold.prior_state, TenantState::Running);
    let revision = n.record.revision;
    for i in 2..5 {
        let t = t0 + Duration::from_secs(i);
        let lag = store
            .apply_poll(&c, answer(TenantState::Running, "https://sod2"), t)
            .unwrap();
        assert!(!lag.changed, "lagging news wakes nobody");
        assert_eq!(lag.record.state, TenantState::OfflineMaintenance);
        assert_eq!(lag.record.observed_at, t, "but the record is fresh");
        assert_eq!(lag.record.revision, revision);
    }
    let t5 = t0 + Duration::from_secs(5);
    let confirmed = store
        .apply_poll(
            &c,
            answer(TenantState::OfflineMaintenance, "https://sod2"),
            t5,
        )
        .unwrap();
    assert!(!confirmed.changed, "the state stays: nobody is woken");
    assert_eq!(confirmed.record.hold, None, "but the hold is over");
    assert_eq!(confirmed.record.state, TenantState::OfflineMaintenance);
    let done = store
        .apply_poll(&c, answer(TenantState::Running, "https://sod2"), t5)
        .unwrap();
    assert_eq!(
        done.record.state,
        TenantState::Running,
        "the upgrade is over"
    );
}

#[test]
fn a_hold_ends_when_the_state_api_moves_on_or_the_hold_times_out() {
    let c = ctx("Cust1");
    let t0 = SystemTime::now();
    // Moved on: neither the implied state nor the one from before.
    let store = Store::new();
    store.apply_poll(&c, answer(TenantState::Running, "https://sod2"), t0);
    store.apply_notification(&c, note(ChangeType::Upgrade, t0), t0);
    let a = store
        .apply_poll(&c, answer(TenantState::Suspended, "https://sod2"), t0)
        .unwrap();
    assert_eq!(
        (a.record.state, a.record.hold.is_none()),
        (TenantState::Suspended, true)
    );
    // Timed out: the lagging answer is taken once the hold has passed.
    let store = Store::new().with_notification_hold(Duration::from_secs(60));
    store.apply_poll(&c, answer(TenantState::Running, "https://sod2"), t0);
    store.apply_notification(&c, note(ChangeType::Suspend, t0), t0);
    let within = t0 + Duration::from_secs(59);
    let held = store
        .apply_poll(&c, answer(TenantState::Running, "https://sod2"), within)
        .unwrap();
    assert_eq!(held.record.state, TenantState::Suspended);
    let after = t0 + Duration::from_secs(60);
    let taken = store
        .apply_poll(&c, answer(TenantState::Running, "https://sod2"), after)
        .unwrap();
    assert_eq!(
        (taken.record.state, taken.record.hold.is_none()),
        (TenantState::Running, true)
    );
}

#[test]
fn a_move_holds_its_endpoint_and_resume_holds_nothing() {
    let c = ctx("Cust1");
    let t0 = SystemTime::now();
    let store = Store::new();
    store.apply_poll(
        &c,
        answer(TenantState::Running, "https://sod2.superoffice.com/Cust1"),
        t0,
    );
    let mut moved = note(ChangeType::Move, t0);
    moved.public_endpoint = "sod3.superoffice.com".into();
    let n = store.apply_notification(&c, moved, t0);
    assert_eq!(n.record.endpoint, "https://sod3.superoffice.com/Cust1");
    let lag = store
        .apply_poll(
            &c,
            answer(TenantState::Running, "https://sod2.superoffice.com/Cust1"),
            t0,
        )
        .unwrap();
    assert_eq!(
        lag.record.endpoint, "https://sod3.superoffice.com/Cust1",
        "the old host lags"
    );
    let confirmed = store
        .apply_poll(
            &c,
            answer(TenantState::Running, "https://sod3.superoffice.com/Cust1"),
            t0,
        )
        .unwrap();
    assert_eq!(confirmed.record.hold, None);
    // A Suspend then a Resume: the Resume implies nothing and ends the hold.
    store.apply_notification(&c, note(ChangeType::Suspend, t0), t0);
    let r = store.apply_notification(&c, note(ChangeType::Resume, t0), t0);
    assert_eq!(r.record.hold, None);
    let a = store
        .apply_poll(
            &c,
            answer(TenantState::Running, "https://sod3.superoffice.com/Cust1"),
            t0,
        )
        .unwrap();
    assert_eq!(a.record.state, TenantState::Running);
}

/// A record as another replica wrote it to the shared log at `revision`.
fn replicated(c: &ContextId, endpoint: &str, revision: u64) -> TenantRecord {
    let now = SystemTime::now();
    let PollResult::Observed(o) = running(endpoint) else {
        unreachable!()
    };
    TenantRecord {
        state: o.state,
        endpoint: o.endpoint,
        revision,
        ..TenantRecord::unknown(c, now)
    }
}

#[test]
fn replicated_records_keep_the_logs_revisions_and_repeats_are_ignored() {
    let store = std::sync::Arc::new(Store::new());
    let (a, b) = (ctx("Cust1"), ctx("Cust2"));
    let watcher = store.register_watcher(vec![]);
    assert!(store.apply_replicated(replicated(&a, "https://sod2", 7)));
    assert!(store.apply_replicated(replicated(&b, "https://sod2", 9)));
    // The same entry again (a watch opened again from an older revision).
    assert!(!store.apply_replicated(replicated(&a, "https://sod2", 7)));
    assert_eq!(store.revision(), 9);
    assert_eq!(store.get("Cust1").unwrap().revision, 7);
    // A record the log holds but this version cannot read still moves the
    // revision: heartbeats say how far the log has been read.
    store.skip_to(12);
    assert_eq!(store.revision(), 12);
    let mut marks = std::collections::HashMap::new();
    watcher.take_now(&mut marks);
    assert_eq!(marks.len(), 2, "each tenant marked, once");
}

#[test]
fn a_replicated_removal_is_remembered_even_for_a_tenant_never_held() {
    let store = Store::new();
    let (a, gone) = (ctx("Cust1"), ctx("Cust9"));
    store.apply_replicated(replicated(&a, "https://sod2", 3));
    store.remove_replicated(&a, 5);
    store.remove_replicated(&gone, 8);
    assert!(!store.contains("Cust1"));
    assert_eq!(store.removed_at(&a), Some(5));
    assert_eq!(store.removed_at(&gone), Some(8));
    assert_eq!(store.revision(), 8);
    let since: Vec<u64> = store.removed_since(4).iter().map(|(r, _)| *r).collect();
    assert_eq!(since, [5, 8]);
}

#[test]
fn a_replicated_refresh_takes_no_revision_and_never_goes_back() {
    let store = Store::new();
    let a = ctx("Cust1");
    store.apply_replicated(replicated(&a, "https://sod2", 3));
    let before = store.get("Cust1").unwrap();
    let later = before.observed_at + Duration::from_secs(30);
    let seen = Freshness {
        observed_at: later,
        valid_until: Some(later + Duration::from_secs(60)),
        last_error: String::new(),
    };
    assert!(store.refresh(&a, &seen));
    let after = store.get("Cust1").unwrap();
    assert_eq!(after.revision, 3);
    assert_eq!(after.observed_at, later);
    // Older news is ignored.
    let older = Freshness {
        observed_at: before.observed_at,
        ..seen
    };
    assert!(!store.refresh(&a, &older));
    assert_eq!(store.get("Cust1").unwrap().observed_at, later);
    assert_eq!(store.revision(), 3);
    assert!(!store.refresh(&ctx("Cust2"), &older), "nothing to refresh");
}

/// The revision index snapshots read holds exactly the map's records, the
/// same `Arc`s, through every path that writes: changes, confirming polls,
/// removals, restores and what the replicas' log brings.
#[test]
fn the_revision_index_holds_exactly_the_maps_records() {
    let store = Store::new();
    let t0 = SystemTime::now();
    let names: Vec<_> = (0..20).map(|i| ctx(&format!("Cust{i}"))).collect();
    for (i, n) in names.iter().enumerate() {
        store.apply_poll(n, running(&format!("https://sod{i}")), t0);
    }
    // Confirming polls (same revision, a new Arc), moves, removals.
    for (i, n) in names.iter().enumerate() {
        let at = t0 + Duration::from_secs(1 + i as u64);
        match i % 4 {
            0 => drop(store.apply_poll(n, running(&format!("https://sod{i}")), at)),
            1 => drop(store.apply_poll(n, running("https://moved"), at)),
            2 => drop(store.remove(n)),
            _ => {}
        }
    }
    store.restore(TenantRecord::unknown(&ctx("Restored"), t0));
    // From the log: a newer record, a removal, another replica's refresh.
    let next = store.revision() + 1;
    store.apply_replicated(replicated(&names[3], "https://log", next));
    store.remove_replicated(&names[7], next + 1);
    store.refresh(
        &names[11],
        &Freshness {
            observed_at: t0 + Duration::from_secs(3600),
            valid_until: None,
            last_error: String::new(),
        },
    );
    let indexed = store.records_between(0, store.revision());
    let mut held = store.snapshot();
    held.sort_by_key(|r| r.revision);
    assert_eq!(indexed.len(), held.len());
    for (a, b) in indexed.iter().zip(&held) {
        assert!(Arc::ptr_eq(a, b), "{a:?} in the index, {b:?} in the map");
    }
}
