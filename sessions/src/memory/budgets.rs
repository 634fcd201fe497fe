//! Per-user budgets in memory: one token bucket of calls and one count of
//! running-call slots per user, as the database keeps them for many
//! daemons (`mcp_user_rates`, `mcp_user_slots`), here for the one daemon
//! that holds the store.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use exai_auth::UserId;

use crate::{Lease, LeaseRequest};

/// Buckets full again this long ago are forgotten (as the database's).
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// Every user's bucket and slots.
#[derive(Debug, Default)]
pub(super) struct Budgets {
    rates: HashMap<UserId, (f64, Instant)>,
    slots: HashMap<UserId, u32>,
}

impl Budgets {
    /// As `mcp_lease_budget`.
    pub(super) fn lease(&mut self, user: UserId, request: LeaseRequest) -> Lease {
        let mut lease = Lease::default();
        let now = Instant::now();
        if request.calls > 0 && request.rpm > 0 {
            let rpm = f64::from(request.rpm);
            let have = match self.rates.get(&user) {
                Some(&(tokens, at)) => {
                    (tokens + now.duration_since(at).as_secs_f64() * rpm / 60.0).min(rpm)
                }
                None => rpm,
            };
            // `have` is within 0..=rpm, so the floor fits.
            lease.calls = request.calls.min(have.floor() as u32);
            let left = have - f64::from(lease.calls);
            if lease.calls == 0 {
                lease.retry_after = Duration::from_secs_f64((1.0 - left) * 60.0 / rpm);
            }
            self.rates.insert(user, (left, now));
            if self.rates.len() > 1024 {
                self.rates
                    .retain(|_, (_, at)| now.duration_since(*at) < FORGET_AFTER);
            }
        }
        if request.slots > 0 {
            let held = self.slots.entry(user).or_insert(0);
            lease.slots = request
                .slots
                .min(request.max_in_flight.saturating_sub(*held));
            *held += lease.slots;
            if *held == 0 {
                self.slots.remove(&user);
            }
        }
        lease
    }

    /// As `mcp_release_slots`.
    pub(super) fn release(&mut self, slots: &[(UserId, u32)]) {
        for (user, n) in slots {
            if let Some(held) = self.slots.get_mut(user) {
                *held = held.saturating_sub(*n);
                if *held == 0 {
                    self.slots.remove(user);
                }
            }
        }
    }
}
