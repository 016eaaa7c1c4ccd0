//! Token buckets for the public webhook: one per client, and one for all
//! clients together. A flood from one client is answered 429 before it
//! costs a signature check, a flood from many addresses meets the total,
//! and SuperOffice's own bursts (a mass upgrade) fit in the allowances.
//!
//! A client is an IPv4 address, or an IPv6 /64: one host is handed a whole
//! /64, so keying by address would give an attacker 2^64 fresh buckets.
//!
//! Memory is bounded: at most `MAX_CLIENTS` buckets. When full, buckets
//! that have refilled (idle clients) are swept out, at most once a second
//! so a flood of new addresses cannot make every request walk the table;
//! until there is room, a new client is refused (fail closed for new
//! addresses under a distributed flood rather than grow without bound).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// The most clients remembered at once.
pub const MAX_CLIENTS: usize = 10_000;
/// The least time between two sweeps of a full table.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

pub struct RateLimiter {
    /// Per client: requests a second and burst.
    per_client: Option<(f64, f64)>,
    /// All clients together: requests a second, and its bucket (its burst
    /// is one second's worth).
    total: Option<f64>,
    inner: Mutex<Inner>,
}

struct Inner {
    buckets: HashMap<IpAddr, Bucket>,
    total: Bucket,
    last_sweep: Option<Instant>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Why a request was refused: which bucket was empty, and how long until
/// it holds a token again (for Retry-After).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Client(Duration),
    Total(Duration),
}

impl Limited {
    pub fn wait(self) -> Duration {
        match self {
            Self::Client(d) | Self::Total(d) => d,
        }
    }
}

impl RateLimiter {
    /// With `per_client` (`per_second`, `burst`), each client may send
    /// `per_second` requests a second, up to `burst` at once; with `total`,
    /// at most that many a second come from all clients together.
    pub fn new(per_client: Option<(f64, f64)>, total: Option<f64>) -> Self {
        let total = total.map(|t| t.max(f64::MIN_POSITIVE));
        let now = Instant::now();
        Self {
            per_client: per_client
                .map(|(rate, burst)| (rate.max(f64::MIN_POSITIVE), burst.max(1.0))),
            total,
            inner: Mutex::new(Inner {
                buckets: HashMap::new(),
                total: Bucket {
                    tokens: total.unwrap_or(0.0).max(1.0),
                    at: now,
                },
                last_sweep: None,
            }),
        }
    }

    /// Takes one request's token for `client`, and one from the total.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Limited> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *inner;
        let Some((rate, burst)) = self.per_client else {
            return take_total(&mut inner.total, self.total, now);
        };
        let key = client_key(client);
        if !inner.buckets.contains_key(&key) && inner.buckets.len() >= MAX_CLIENTS {
            let due = inner
                .last_sweep
                .is_none_or(|at| now.saturating_duration_since(at) >= SWEEP_INTERVAL);
            if due {
                inner.last_sweep = Some(now);
                inner
                    .buckets
                    .retain(|_, b| refill(*b, now, rate, burst).tokens < burst);
            }
            if inner.buckets.len() >= MAX_CLIENTS {
                return Err(Limited::Total(SWEEP_INTERVAL));
            }
        }
        let b = inner.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        *b = refill(*b, now, rate, burst);
        if b.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - b.tokens) / rate);
            return Err(Limited::Client(wait));
        }
        // Refused by the total, the client keeps its own token.
        take_total(&mut inner.total, self.total, now)?;
        b.tokens -= 1.0;
        Ok(())
    }

    /// How many clients are remembered.
    pub fn clients(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .buckets
            .len()
    }
}

/// The address a client is known by: IPv4 as it is (IPv4-mapped IPv6
/// too), IPv6 by its /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Takes one token from the all-clients bucket (its burst is one second's
/// worth), if there is a total.
fn take_total(bucket: &mut Bucket, total: Option<f64>, now: Instant) -> Result<(), Limited> {
    let Some(total) = total else {
        return Ok(());
    };
    *bucket = refill(*bucket, now, total, total.max(1.0));
    if bucket.tokens < 1.0 {
        return Err(Limited::Total(Duration::from_secs_f64(
            (1.0 - bucket.tokens) / total,
        )));
    }
    bucket.tokens -= 1.0;
    Ok(())
}

fn refill(b: Bucket, now: Instant, per_second: f64, burst: f64) -> Bucket {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    Bucket {
        tokens: (b.tokens + elapsed * per_second).min(burst),
        at: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_its_rate() {
        let l = RateLimiter::new(Some((10.0, 5.0)), None);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t = Instant::now();
        for _ in 0..5 {
            assert!(l.check(a, t).is_ok());
        }
        let wait = l.check(a, t).unwrap_err();
        assert!(matches!(wait, Limited::Client(_)), "{wait:?}");
        assert!(
            wait.wait() > Duration::ZERO && wait.wait() <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another client is not affected.
        assert!(l.check(b, t).is_ok());
        // 100 ms later, one more.
        let later = t + Duration::from_millis(100);
        assert!(l.check(a, later).is_ok());
        assert!(l.check(a, later).is_err());
    }

    #[test]
    fn many_clients_meet_the_total() {
        let l = RateLimiter::new(Some((10.0, 5.0)), Some(100.0));
        let t = Instant::now();
        let mut ok = 0;
        for i in 0..300u32 {
            let ip = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            match l.check(ip, t) {
                Ok(()) => ok += 1,
                Err(Limited::Total(wait)) => assert!(wait <= Duration::from_millis(10)),
                Err(e) => panic!("one request per client is within its own limit: {e:?}"),
            }
        }
        assert_eq!(ok, 100, "one second's worth of the total");
        // A refusal by the total does not spend the client's own tokens.
        let first = IpAddr::from(0x0a00_0000u32.to_be_bytes());
        let later = t + Duration::from_secs(1);
        for _ in 0..5 {
            assert!(l.check(first, later).is_ok());
        }
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let l = RateLimiter::new(Some((1.0, 2.0)), None);
        let t = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(l.check(a, t).is_ok());
        assert!(l.check(b, t).is_ok());
        assert!(l.check(a, t).is_err(), "the same /64 shares one bucket");
        assert!(l.check(other, t).is_ok());
        // IPv4-mapped IPv6 is the IPv4 client.
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(l.check(v4, t).is_ok());
        assert!(l.check(mapped, t).is_ok());
        assert!(l.check(v4, t).is_err());
        assert_eq!(l.clients(), 3);
    }

    #[test]
    fn memory_is_bounded_and_idle_clients_make_room() {
        let l = RateLimiter::new(Some((1.0, 2.0)), None);
        let t = Instant::now();
        for i in 0..MAX_CLIENTS as u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            assert!(l.check(ip, t).is_ok());
        }
        let newcomer: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(l.check(newcomer, t).is_err(), "full of busy clients");
        // Known clients are still served from their buckets.
        assert!(l.check(IpAddr::from(7u32.to_be_bytes()), t).is_ok());
        // Within the sweep interval the table is not walked again, even
        // once the clients have refilled.
        let soon = t + Duration::from_millis(500);
        assert!(l.check(newcomer, soon).is_err());
        // Once they have refilled and a sweep is due, they make room.
        assert!(l.check(newcomer, t + Duration::from_secs(5)).is_ok());
        assert!(l.clients() <= MAX_CLIENTS);
    }
}
