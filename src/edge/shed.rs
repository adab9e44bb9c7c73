//! Shedding when the process is saturated: a cap on edge requests in flight.
//!
//! Why: a request that cannot be answered soon is better refused at once
//! (503 + `Retry-After`, which clients and load balancers understand) than
//! queued without bound, where it only adds latency for everyone and memory
//! for the process. The redirect path itself never waits, except for the
//! bounded click-log hand-off, so the cap is reached only when that wait,
//! the runtime or the machine falls behind. One shared counter: an atomic
//! increment and decrement per request.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many edge requests may be in flight at once.
pub struct InFlightLimit {
    current: AtomicUsize,
    max: usize,
}

/// One request in flight; the slot is freed when dropped.
pub struct Slot<'a>(&'a InFlightLimit);

impl InFlightLimit {
    pub fn new(max: usize) -> InFlightLimit {
        InFlightLimit {
            current: AtomicUsize::new(0),
            max,
        }
    }

    /// A slot, or `None` when `max` requests are already in flight.
    pub fn try_begin(&self) -> Option<Slot<'_>> {
        if self.current.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.current.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(self))
    }

    pub fn in_flight(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_run_out_at_the_cap_and_come_back_when_dropped() {
        let limit = InFlightLimit::new(2);
        let a = limit.try_begin().unwrap();
        let b = limit.try_begin().unwrap();
        assert!(limit.try_begin().is_none());
        assert_eq!(limit.in_flight(), 2, "a refused request holds no slot");
        drop(a);
        let c = limit.try_begin().unwrap();
        drop((b, c));
        assert_eq!(limit.in_flight(), 0);
    }
}
