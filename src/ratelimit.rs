//! A token bucket per client address, for the public webhook: a flood from
//! one client is answered 429 before it costs a signature check, while
//! SuperOffice's own bursts (a mass upgrade) fit in the burst allowance.
//!
//! Memory is bounded: at most `MAX_CLIENTS` buckets; when full, buckets
//! that have refilled (idle clients) are dropped first, and if none has,
//! the new client shares the refusal of the busiest (fail closed for new
//! addresses under a distributed flood rather than grow without bound).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// The most client addresses remembered at once.
pub const MAX_CLIENTS: usize = 10_000;

pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `per_second` requests a second per client, up to `burst` at once.
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self {
            per_second: per_second.max(f64::MIN_POSITIVE),
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request's token for `client`; `Err` holds how long until
    /// one is available (for Retry-After).
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(&client) && buckets.len() >= MAX_CLIENTS {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| refill(*b, now, rate, burst).tokens < burst);
            if buckets.len() >= MAX_CLIENTS {
                return Err(Duration::from_secs(1));
            }
        }
        let b = buckets.entry(client).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        *b = refill(*b, now, self.per_second, self.burst);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_second))
        }
    }
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
        let l = RateLimiter::new(10.0, 5.0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t = Instant::now();
        for _ in 0..5 {
            assert!(l.check(a, t).is_ok());
        }
        let wait = l.check(a, t).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
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
    fn memory_is_bounded_and_idle_clients_make_room() {
        let l = RateLimiter::new(1.0, 2.0);
        let t = Instant::now();
        for i in 0..MAX_CLIENTS as u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            assert!(l.check(ip, t).is_ok());
        }
        let newcomer: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(l.check(newcomer, t).is_err(), "full of busy clients");
        // Once they have refilled they are idle and make room.
        assert!(l.check(newcomer, t + Duration::from_secs(5)).is_ok());
        assert!(l.buckets.lock().unwrap().len() <= MAX_CLIENTS);
    }
}
