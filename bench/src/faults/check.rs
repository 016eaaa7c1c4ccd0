//! The checker: the properties a fleet of replicas must keep under
//! faults, each judged over the whole history of a run, with its figures
//! and the fault (phase) each violation happened in.

use std::collections::{BTreeMap, HashMap};

use tenant_status::pb::{self, WatchEventType as W};

use super::{
    history::{Mem, Rec},
    load::FIRST_HOST,
};

/// One property's verdict.
pub struct Verdict {
    pub name: &'static str,
    pub pass: bool,
    pub figures: String,
    /// Violations in each phase (the rows of the table); None where the
    /// property is not judged in that phase.
    pub by_phase: Vec<Option<usize>>,
}

pub struct Params {
    pub partitions: f64,
    /// Allowed at a tenure's edge: a poll's request in flight as the
    /// tenure ends (its start seen by the proxy a moment after the
    /// replica's check), and two replicas' tenures meeting at a handover.
    pub grace: f64,
    /// The replica the SIGSTOP fault pauses.
    pub paused_replica: usize,
    /// "panicked" lines in the replicas' logs, each with its file.
    pub panics: Vec<String>,
}

fn phase_of(m: &Mem, t: f64) -> usize {
    m.phases.iter().rposition(|p| p.start <= t).unwrap_or(0)
}

fn counts(m: &Mem, ts: impl IntoIterator<Item = f64>) -> Vec<Option<usize>> {
    let mut v = vec![Some(0); m.phases.len()];
    for t in ts {
        if let Some(Some(c)) = v.get_mut(phase_of(m, t)) {
            *c += 1;
        }
    }
    v
}

/// Only the last row (the end of the run) is judged.
fn at_end(m: &Mem, n: usize) -> Vec<Option<usize>> {
    let mut v = vec![None; m.phases.len()];
    if let Some(last) = v.last_mut() {
        *last = Some(n);
    }
    v
}

fn host_version(m: &Mem) -> HashMap<String, u64> {
    let mut hv: HashMap<String, u64> = m.truths.iter().map(|t| (t.host.clone(), t.v)).collect();
    hv.insert(FIRST_HOST.to_owned(), 0);
    hv
}

/// Every record seen anywhere (events and final reads), first sighting
/// of each (tenant, revision), with when.
fn all_records(m: &Mem) -> Vec<(f64, &Rec)> {
    let end = m.phases.last().map(|p| p.end).unwrap_or(0.0);
    m.events
        .iter()
        .filter_map(|e| e.rec.as_ref().map(|r| (e.t, r)))
        .chain(m.finals.iter().flatten().map(|r| (end, r)))
        .collect()
}

pub fn check(m: &Mem, p: &Params) -> Vec<Verdict> {
    let records = all_records(m);
    // tenant -> revision -> the record first seen with it.
    let mut by_tenant: HashMap<&str, BTreeMap<u64, (f64, &Rec)>> = HashMap::new();
    for (t, r) in &records {
        by_tenant
            .entry(r.ctx.as_str())
            .or_default()
            .entry(r.rev)
            .or_insert((*t, r));
    }
    // Add the shared store's own versions (`stored.rs`): revisions no
    // watcher was handed, because they were overwritten while the
    // watchers' replicas were reading on after a broken watch.
    let end = m.phases.last().map(|p| p.end).unwrap_or(0.0);
    for r in &m.stored {
        by_tenant
            .entry(r.ctx.as_str())
            .or_default()
            .entry(r.rev)
            .or_insert((end, r));
    }
    let notes_seen: HashMap<&str, f64> = {
        let mut s: HashMap<&str, f64> = HashMap::new();
        let stored = m.stored.iter().map(|r| (end, r));
        for (t, r) in records.iter().map(|(t, r)| (*t, *r)).chain(stored) {
            if !r.note.is_empty() {
                let e = s.entry(r.note.as_str()).or_insert(t);
                *e = e.min(t);
            }
        }
        s
    };
    // A notification is applied if its marker is on a record seen
    // anywhere, or a later notification of the same tenant (sent after
    // this one's last answer) is: watchers may be handed only a tenant's
    // newest record.
    let applied = |n: &super::history::Note| -> Option<&'static str> {
        if notes_seen.contains_key(n.marker.as_str()) {
            return Some("present");
        }
        m.notes
            .iter()
            .any(|later| {
                later.ctx == n.ctx
                    && later.first_start > n.last_end
                    && notes_seen.contains_key(later.marker.as_str())
            })
            .then_some("superseded")
    };
    // A notification's trouble is placed where its first attempt ended:
    // one sent just before a fault and cut off by it belongs to the fault.
    let first_end: HashMap<u64, f64> = m
        .reqs
        .iter()
        .filter(|r| r.attempt == 1)
        .map(|r| (r.seq, r.end))
        .collect();
    let when = |n: &super::history::Note| first_end.get(&n.seq).copied().unwrap_or(n.first_start);
    let mut out = Vec::new();

    // 1. Acknowledged notifications kept.
    {
        let acked: Vec<_> = m.notes.iter().filter(|n| n.acked).collect();
        let mut superseded = 0;
        let lost: Vec<_> = acked
            .iter()
            .filter(|n| match applied(n) {
                Some("superseded") => {
                    superseded += 1;
                    false
                }
                Some(_) => false,
                None => true,
            })
            .collect();
        out.push(Verdict {
            name: "acknowledged notifications kept",
            pass: lost.is_empty(),
            figures: format!(
                "{} of {} acknowledged lost ({} present, {superseded} superseded){}",
                lost.len(),
                acked.len(),
                acked.len() - lost.len() - superseded,
                lost.first()
                    .map(|n| format!("; e.g. {} on {}", n.marker, n.ctx))
                    .unwrap_or_default()
            ),
            by_phase: counts(m, lost.iter().map(|n| when(n))),
        });
    }

    // 2. Retried notifications applied.
    {
        // Stricter than for acknowledged ones: "superseded" does not
        // count. A later notification proves nothing about this one; its
        // marker must be on a record a watcher saw or on a version the
        // shared store kept.
        let retried: Vec<_> = m.notes.iter().filter(|n| n.attempts > 1).collect();
        let lost: Vec<_> = retried
            .iter()
            .filter(|n| !notes_seen.contains_key(n.marker.as_str()))
            .collect();
        let lost_replayed = lost.iter().filter(|n| n.replayed).count();
        let replayed = retried.iter().filter(|n| n.replayed).count();
        let gave_up = retried.iter().filter(|n| !n.acked && !n.replayed).count();
        out.push(Verdict {
            name: "retried notifications applied",
            pass: lost.is_empty(),
            figures: format!(
                "{} of {} retried never on any record ({lost_replayed} of them answered 401 token_replayed on a retry); {replayed} retried got 401 token_replayed in all, {gave_up} never acknowledged{}",
                lost.len(),
                retried.len(),
                lost.first()
                    .map(|n| format!("; e.g. {} on {} ({} attempts, last {})", n.marker, n.ctx, n.attempts, n.last_status))
                    .unwrap_or_default()
            ),
            by_phase: counts(m, lost.iter().map(|n| when(n))),
        });
    }

    // 3. Replicas agree at the end.
    {
        let mut differ = Vec::new();
        let mut missing = 0;
        let maps: Vec<HashMap<&str, &Rec>> = m
            .finals
            .iter()
            .map(|f| f.iter().map(|r| (r.ctx.as_str(), r)).collect())
            .collect();
        let mut names: Vec<&str> = maps.iter().flat_map(|x| x.keys().copied()).collect();
        names.sort_unstable();
        names.dedup();
        for ctx in &names {
            let seen: Vec<Option<&&Rec>> = maps.iter().map(|x| x.get(ctx)).collect();
            if seen.iter().any(Option::is_none) {
                missing += 1;
                continue;
            }
            let first = seen[0].map(|r| (r.rev, r.fingerprint()));
            if seen
                .iter()
                .any(|r| r.map(|r| (r.rev, r.fingerprint())) != first)
            {
                differ.push(*ctx);
            }
        }
        let n = differ.len() + missing;
        out.push(Verdict {
            name: "replicas agree at the end",
            pass: n == 0 && m.finals.len() == 3 && !names.is_empty(),
            figures: format!(
                "{} of {} tenants differ in record or revision, {missing} missing on some replica ({} replicas read){}",
                differ.len(),
                names.len(),
                m.finals.len(),
                differ
                    .first()
                    .map(|c| format!("; e.g. {c}: {}", maps
                        .iter()
                        .map(|x| x.get(c).map(|r| format!("{}@{}", r.host, r.rev)).unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(" / ")))
                    .unwrap_or_default()
            ),
            by_phase: at_end(m, n),
        });
    }

    // 4. One revision, one record.
    {
        let mut first: HashMap<u64, (&Rec, f64)> = HashMap::new();
        let mut bad: BTreeMap<u64, f64> = BTreeMap::new();
        // The store's own version of a revision is compared as well.
        let with_stored: Vec<(f64, &Rec)> = records
            .iter()
            .copied()
            .chain(m.stored.iter().map(|r| (end, r)))
            .collect();
        for (t, r) in &with_stored {
            match first.get(&r.rev) {
                None => {
                    first.insert(r.rev, (r, *t));
                }
                Some((f, _)) if f.fingerprint() != r.fingerprint() => {
                    bad.entry(r.rev).or_insert(*t);
                }
                Some(_) => {}
            }
        }
        let example = bad.keys().next().map(|rev| {
            let a = first[rev].0;
            let b = with_stored
                .iter()
                .find(|(_, r)| r.rev == *rev && r.fingerprint() != a.fingerprint())
                .map(|(_, r)| format!("{} {}", r.ctx, r.host))
                .unwrap_or_default();
            format!("; e.g. revision {rev}: {} {} and {b}", a.ctx, a.host)
        });
        out.push(Verdict {
            name: "one revision means one record",
            pass: bad.is_empty(),
            figures: format!(
                "{} of {} revisions seen name two records{}",
                bad.len(),
                first.len(),
                example.unwrap_or_default()
            ),
            by_phase: counts(m, bad.values().copied()),
        });
    }

    // 5. Revisions increase within a stream.
    {
        let streams: std::collections::HashSet<u32> = m.events.iter().map(|e| e.stream).collect();
        out.push(Verdict {
            name: "revisions increase within a stream",
            pass: m.backwards.is_empty(),
            figures: format!(
                "{} went down in {} events on {} streams{}",
                m.backwards.len(),
                m.events.len(),
                streams.len(),
                m.backwards
                    .first()
                    .map(|b| format!(
                        "; e.g. {} stream {}: {} after {}",
                        b.watcher, b.stream, b.after, b.before
                    ))
                    .unwrap_or_default()
            ),
            by_phase: counts(m, m.backwards.iter().map(|b| b.t)),
        });
    }

    // 6. SYNCED and HEARTBEAT at R: the watcher holds every tenant's
    // latest revision up to R, of all the records seen anywhere.
    {
        let mut gaps = Vec::new();
        let mut tenant_gaps = 0usize;
        let mut example = String::new();
        for s in &m.syncs {
            let mut here = 0;
            for (ctx, revs) in &by_tenant {
                let Some((latest, _)) = revs.range(..=s.rev).next_back() else {
                    continue;
                };
                let held = s.view.get(*ctx).copied().unwrap_or(0);
                if held < *latest {
                    here += 1;
                    if example.is_empty() {
                        example = format!(
                            "; e.g. {} stream {} at {} {}: {ctx} held at {held}, {latest} exists",
                            s.watcher,
                            s.stream,
                            if s.kind == W::Synced as i32 {
                                "SYNCED"
                            } else {
                                "HEARTBEAT"
                            },
                            s.rev
                        );
                    }
                }
            }
            if here > 0 {
                gaps.push(s.t);
                tenant_gaps += here;
            }
        }
        let synced = m
            .syncs
            .iter()
            .filter(|s| s.kind == W::Synced as i32)
            .count();
        out.push(Verdict {
            name: "SYNCED/HEARTBEAT at R holds all up to R",
            pass: gaps.is_empty(),
            figures: format!(
                "{} of {} ({synced} SYNCED) behind, {tenant_gaps} tenant gaps{example}",
                gaps.len(),
                m.syncs.len()
            ),
            by_phase: counts(m, gaps),
        });
    }

    // 7. One poller at a time, from the replicas' own lease tenures
    // (`/cluster/leases`, sampled through the run): (a) every poll a
    // proxy saw falls inside a tenure of the tenant's partition held by
    // the replica that made it, and (b) no two replicas' tenures of one
    // partition overlap; each past a grace for a request in flight at the
    // edge. A replica woken from SIGSTOP must find its tenures ended by
    // its own clock and poll nothing until it takes a lease again.
    {
        let mut by_owner: HashMap<(usize, u16), Vec<(f64, f64)>> = HashMap::new();
        let mut by_partition: BTreeMap<u16, Vec<&super::history::Tenure>> = BTreeMap::new();
        for t in m.tenures.values() {
            by_owner
                .entry((t.replica, t.partition))
                .or_default()
                .push((t.since, t.end));
            by_partition.entry(t.partition).or_default().push(t);
        }
        // (a) Polls outside their replica's tenures, each with how far
        // outside (seconds past the nearest tenure; infinite: none at all).
        let mut outside: Vec<(f64, f64, &super::history::Poll)> = Vec::new();
        for q in &m.polls {
            let part = tenant_status::cluster::partition_of(&q.ctx);
            let tenures = by_owner.get(&(q.replica, part));
            let distance = tenures
                .into_iter()
                .flatten()
                .map(|(since, end)| (since - q.start).max(q.start - end).max(0.0))
                .fold(f64::INFINITY, f64::min);
            if distance > p.grace {
                outside.push((q.start, distance, q));
            }
        }
        // Polls by a replica in the seconds after it was woken from
        // SIGSTOP: the ones the fencing of its lease clock is about.
        let woken: Vec<(usize, f64)> = m
            .phases
            .iter()
            .filter(|ph| ph.name == "SIGSTOP replica")
            .map(|ph| (p.paused_replica, ph.heal))
            .collect();
        let after_wake = m
            .polls
            .iter()
            .filter(|q| {
                woken
                    .iter()
                    .any(|(r, at)| q.replica == *r && q.start >= *at && q.start < at + 5.0)
            })
            .count();
        let after_wake_outside = outside
            .iter()
            .filter(|(_, _, q)| {
                woken
                    .iter()
                    .any(|(r, at)| q.replica == *r && q.start >= *at && q.start < at + 5.0)
            })
            .count();
        // (b) Two replicas' tenures of one partition overlapping, and the
        // closest handover (the least gap, negative: an overlap within
        // the grace).
        let mut overlaps: Vec<(f64, f64, String)> = Vec::new();
        let mut closest: Option<(f64, String)> = None;
        for (part, list) in &by_partition {
            for (i, a) in list.iter().enumerate() {
                for b in &list[i + 1..] {
                    if a.replica == b.replica {
                        continue;
                    }
                    let overlap = a.end.min(b.end) - a.since.max(b.since);
                    let (first, second) = if a.since <= b.since { (a, b) } else { (b, a) };
                    let show = |t: &super::history::Tenure| {
                        let why = if t.why.is_empty() { "held" } else { &t.why };
                        format!(
                            "replica {} {:.3}–{:.3} s ({why})",
                            t.replica, t.since, t.end
                        )
                    };
                    let say = format!("partition {part}: {}, {}", show(first), show(second));
                    if closest.as_ref().is_none_or(|(c, _)| overlap > *c) {
                        closest = Some((overlap, say.clone()));
                    }
                    if overlap > p.grace {
                        overlaps.push((a.since.max(b.since), overlap, say));
                    }
                }
            }
        }
        let worst_poll = outside
            .iter()
            .max_by(|x, y| x.1.total_cmp(&y.1))
            .map(|(_, d, q)| {
                let far = if d.is_finite() {
                    format!("{d:.2} s outside its nearest tenure")
                } else {
                    "with no tenure of that partition at all".to_owned()
                };
                format!(
                    "; worst poll: {} by replica {} at {:.3} s (partition {}), {far}",
                    q.ctx,
                    q.replica,
                    q.start,
                    tenant_status::cluster::partition_of(&q.ctx)
                )
            })
            .unwrap_or_default();
        let worst_overlap = overlaps
            .iter()
            .max_by(|x, y| x.1.total_cmp(&y.1))
            .map(|(_, o, say)| format!("; worst overlap {o:.2} s: {say}"))
            .unwrap_or_default();
        let closest = closest
            .map(|(o, say)| {
                if o > 0.0 {
                    format!("; closest handover overlapped {:.0} ms: {say}", o * 1000.0)
                } else {
                    format!("; closest handover {:.0} ms apart: {say}", -o * 1000.0)
                }
            })
            .unwrap_or_default();
        let ended = m.tenures.values().filter(|t| !t.why.is_empty()).count();
        let mut whys: BTreeMap<&str, usize> = BTreeMap::new();
        for t in m.tenures.values().filter(|t| !t.why.is_empty()) {
            *whys.entry(t.why.as_str()).or_default() += 1;
        }
        let whys = whys
            .iter()
            .map(|(w, n)| format!("{n} {w}"))
            .collect::<Vec<_>>()
            .join(", ");
        out.push(Verdict {
            name: "one poller per tenant at a time",
            pass: outside.is_empty() && overlaps.is_empty() && !m.tenures.is_empty(),
            figures: format!(
                "{} tenures seen ({ended} ended: {whys}; from {} samples, {} missed), {} polls checked ({after_wake} by a replica in the 5 s after its SIGSTOP): {} outside their replica's tenures ({after_wake_outside} after a SIGSTOP); {} overlapping tenures of two replicas{worst_poll}{worst_overlap}{closest}",
                m.tenures.len(),
                m.lease_samples.0,
                m.lease_samples.1,
                m.polls.len(),
                outside.len(),
                overlaps.len(),
            ),
            by_phase: counts(
                m,
                outside
                    .iter()
                    .map(|(t, _, _)| *t)
                    .chain(overlaps.iter().map(|(t, _, _)| *t)),
            ),
        });
    }

    // 8. No poll answer written over a record observed later: every truth
    // has a host of its own, so a record's host says which truth it came
    // from; a poll's record must not carry an older truth than a record
    // of a lower revision, nor an earlier observed_at.
    {
        let hv = host_version(m);
        let mut older = Vec::new();
        let mut earlier = 0usize;
        let mut example = String::new();
        for (ctx, revs) in &by_tenant {
            let (mut max_v, mut max_obs, mut max_rev) = (0u64, 0i64, 0u64);
            for (rev, (t, r)) in revs.iter() {
                let v = hv.get(&r.host).copied();
                if r.source == pb::ChangeSource::Poll as i32 {
                    if let Some(v) = v
                        && v < max_v
                    {
                        older.push(*t);
                        if example.is_empty() {
                            example = format!(
                                "; e.g. {ctx} revision {rev} carries truth {v} ({}) over truth {max_v} at revision {max_rev}",
                                r.host
                            );
                        }
                    } else if r.observed_ms < max_obs {
                        earlier += 1;
                        older.push(*t);
                    }
                }
                if let Some(v) = v
                    && v > max_v
                {
                    max_v = v;
                    max_rev = *rev;
                }
                max_obs = max_obs.max(r.observed_ms);
            }
        }
        out.push(Verdict {
            name: "no poll answer over a newer record",
            pass: older.is_empty(),
            figures: format!(
                "{} poll records older than a record before them ({} by observed_at), {} records checked{example}",
                older.len(),
                earlier,
                records.len()
            ),
            by_phase: counts(m, older),
        });
    }

    // 9. The fleet converges to SuperOffice's truth.
    {
        let mut wrong = 0usize;
        let mut example = String::new();
        for (i, f) in m.finals.iter().enumerate() {
            for r in f {
                let Some((state, host)) = m.final_truth.get(&r.ctx) else {
                    continue;
                };
                let want = match *state {
                    "Suspended" => pb::TenantState::Suspended as i32,
                    _ => pb::TenantState::Running as i32,
                };
                if r.state != want || r.host != *host {
                    wrong += 1;
                    if example.is_empty() {
                        example = format!(
                            "; e.g. {} on replica {i}: {} at {}, truth {state} at {host}",
                            r.ctx,
                            pb::TenantState::try_from(r.state)
                                .map(|s| s.as_str_name())
                                .unwrap_or("?"),
                            r.host
                        );
                    }
                }
            }
        }
        let total: usize = m.finals.iter().map(Vec::len).sum();
        out.push(Verdict {
            name: "converges to SuperOffice's truth",
            pass: wrong == 0 && total > 0,
            figures: format!(
                "{wrong} of {total} records (all replicas) differ from the truth{example}"
            ),
            by_phase: at_end(m, wrong),
        });
    }

    // 10. Every partition held after each heal.
    {
        let by_phase: Vec<Option<usize>> = m
            .phases
            .iter()
            .map(|ph| Some(usize::from(ph.held_after != p.partitions)))
            .collect();
        let short: Vec<String> = m
            .phases
            .iter()
            .filter(|ph| ph.held_after != p.partitions)
            .map(|ph| format!("{}: {}", ph.name, ph.held_after))
            .collect();
        let healed: Vec<String> = m
            .phases
            .iter()
            .filter_map(|ph| ph.healed_in.map(|s| format!("{s:.1}")))
            .collect();
        out.push(Verdict {
            name: "every partition held after healing",
            pass: short.is_empty(),
            figures: format!(
                "{} of {} settles short of {} ({}); healed (all ready, all held) in {} s",
                short.len(),
                m.phases.len(),
                p.partitions,
                if short.is_empty() {
                    "none".into()
                } else {
                    short.join(", ")
                },
                healed.join(" / ")
            ),
            by_phase,
        });
    }

    // 11. No panics.
    out.push(Verdict {
        name: "no panics",
        pass: p.panics.is_empty(),
        figures: format!(
            "{} 'panicked' lines in the replicas' logs{}",
            p.panics.len(),
            p.panics
                .first()
                .map(|l| format!("; e.g. {l}"))
                .unwrap_or_default()
        ),
        by_phase: at_end(m, p.panics.len()),
    });
    out
}
