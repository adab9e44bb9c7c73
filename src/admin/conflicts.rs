//! The budget of custom codes a tenant may find taken by *other* tenants.
//!
//! Codes are one namespace, so a create with a custom code that another
//! tenant holds must fail (409 `code_taken`), and that answer tells the
//! caller the code exists. The edge throttles that question hard (a miss
//! spends a `not_found` token); here each tenant gets a token bucket of
//! foreign conflicts (`admin.code_conflicts_per_sec`, `_burst`). Once it
//! is empty, every custom code of that tenant is refused 429 without being
//! looked up, so the refusal itself says nothing. Conflicts with the
//! tenant's own codes and admin tokens (which see every link) cost nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Tenants tracked before full buckets are forgotten (a forgotten bucket
/// starts full again, which is what a refilled one is).
const MAX_TRACKED: usize = 4096;

pub struct ConflictBudget {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    /// May go below zero: conflicts found in one batch are all charged.
    tokens: f64,
    at: Instant,
}

impl ConflictBudget {
    pub fn new(per_sec: f64, burst: u32) -> ConflictBudget {
        ConflictBudget {
            per_sec,
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refilled(&self, b: Bucket, now: Instant) -> Bucket {
        let secs = now.saturating_duration_since(b.at).as_secs_f64();
        Bucket {
            tokens: (b.tokens + secs * self.per_sec).min(self.burst),
            at: now,
        }
    }

    /// How many foreign conflicts `tenant` may have now.
    pub fn available(&self, tenant: &str, now: Instant) -> usize {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        match buckets.get(tenant) {
            None => self.burst as usize,
            Some(b) => self.refilled(*b, now).tokens.max(0.0) as usize,
        }
    }

    /// Charges `n` foreign conflicts to `tenant`.
    pub fn spend(&self, tenant: &str, n: usize, now: Instant) {
        if n == 0 {
            return;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(tenant) {
            let burst = self.burst;
            buckets.retain(|_, b| self.refilled(*b, now).tokens < burst);
        }
        let full = Bucket {
            tokens: self.burst,
            at: now,
        };
        let b = buckets.entry(tenant.to_owned()).or_insert(full);
        let mut r = self.refilled(*b, now);
        r.tokens -= n as f64;
        *b = r;
    }

    /// Seconds until `tenant` may have one conflict again (at least 1).
    pub fn retry_after_secs(&self, tenant: &str, now: Instant) -> u64 {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let tokens = buckets
            .get(tenant)
            .map_or(self.burst, |b| self.refilled(*b, now).tokens);
        ((1.0 - tokens).max(0.0) / self.per_sec).ceil().max(1.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_tenant_spends_its_burst_then_earns_conflicts_back_at_the_rate() {
        let b = ConflictBudget::new(0.5, 20);
        let t0 = Instant::now();
        assert_eq!(b.available("a", t0), 20);
        b.spend("a", 25, t0);
        assert_eq!(b.available("a", t0), 0, "overspent: in debt");
        assert_eq!(b.retry_after_secs("a", t0), 12, "(1 - -5) / 0.5");
        assert_eq!(b.available("b", t0), 20, "tenants are apart");
        assert_eq!(b.available("a", t0 + Duration::from_secs(12)), 1);
        assert_eq!(
            b.available("a", t0 + Duration::from_secs(3600)),
            20,
            "capped at the burst"
        );
    }
}
