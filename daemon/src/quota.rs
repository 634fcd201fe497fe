//! Per-user limits on tool calls, shared by every connection of the daemon:
//! calls per minute (`EXAI_USER_RPM`) and calls running at once
//! (`EXAI_USER_MAX_INFLIGHT`). One user's flood is refused at the door, so
//! it cannot take the daemon's time from anyone else.
//!
//! The rate is a GCRA token bucket per user (`governor`): a burst of up to
//! `rpm` calls, refilled evenly over the minute. A refusal says how long to
//! wait. The limits are per daemon: several daemons behind one balancer
//! each allow a user this much.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use exai_auth::UserId;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The limits, as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserLimits {
    /// Tool calls per minute per user; `None` is no limit (`EXAI_USER_RPM=0`).
    pub rpm: Option<NonZeroU32>,
    /// Tool calls one user may have running at once, over all connections.
    pub max_in_flight: usize,
}

impl Default for UserLimits {
    fn default() -> Self {
        UserLimits {
            rpm: NonZeroU32::new(60),
            max_in_flight: 8,
        }
    }
}

/// Why a call was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Over `EXAI_USER_RPM`; a call is allowed again after `retry_after`.
    Rate { rpm: u32, retry_after: Duration },
    /// Over `EXAI_USER_MAX_INFLIGHT`; retry when one of the user's calls ends.
    InFlight { max: usize },
}

impl Refusal {
    /// When to try again: the bucket's answer, or a short pause for a slot.
    pub(crate) fn retry_after(self) -> Duration {
        match self {
            Refusal::Rate { retry_after, .. } => retry_after,
            Refusal::InFlight { .. } => Duration::from_secs(1),
        }
    }

    /// What the client is told.
    pub(crate) fn message(self) -> String {
        match self {
            Refusal::Rate { rpm, retry_after } => format!(
                "rate limit: at most {rpm} tool calls per minute per user (EXAI_USER_RPM); \
                 retry in {:.1} s",
                retry_after.as_secs_f64()
            ),
            Refusal::InFlight { max } => format!(
                "you already have {max} tool calls running (EXAI_USER_MAX_INFLIGHT); \
                 retry when one finishes"
            ),
        }
    }
}

/// After this many admissions, forget the users whose buckets are full again.
const SWEEP_EVERY: u32 = 4096;

/// The per-user gate.
#[derive(Debug)]
pub(crate) struct UserQuota {
    limits: UserLimits,
    rate: Option<DefaultKeyedRateLimiter<UserId>>,
    in_flight: Mutex<HashMap<UserId, usize>>,
    admitted: AtomicU32,
}

/// A call's place among its user's running calls; freed on drop.
#[derive(Debug)]
pub(crate) struct Admitted {
    quota: Arc<UserQuota>,
    user: UserId,
}

impl UserQuota {
    pub(crate) fn new(limits: UserLimits) -> Self {
        UserQuota {
            limits,
            rate: limits
                .rpm
                .map(|rpm| RateLimiter::keyed(Quota::per_minute(rpm))),
            in_flight: Mutex::new(HashMap::new()),
            admitted: AtomicU32::new(0),
        }
    }

    pub(crate) fn limits(&self) -> UserLimits {
        self.limits
    }

    /// How many calls `user` has running now.
    pub(crate) fn running(&self, user: &UserId) -> usize {
        self.counts().get(user).copied().unwrap_or(0)
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, usize>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets one call of `user` in, or says why not. A call refused for
    /// running too many does not use up the user's rate.
    pub(crate) fn admit(self: &Arc<Self>, user: UserId) -> Result<Admitted, Refusal> {
        {
            let mut counts = self.counts();
            let running = counts.entry(user).or_insert(0);
            if *running >= self.limits.max_in_flight {
                return Err(Refusal::InFlight {
                    max: self.limits.max_in_flight,
                });
            }
            *running += 1;
        }
        let admitted = Admitted {
            quota: self.clone(),
            user,
        };
        if let (Some(rate), Some(rpm)) = (&self.rate, self.limits.rpm) {
            if self.admitted.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
                rate.retain_recent();
            }
            if let Err(not_until) = rate.check_key(&user) {
                return Err(Refusal::Rate {
                    rpm: rpm.get(),
                    retry_after: not_until.wait_time_from(DefaultClock::default().now()),
                });
            }
        }
        Ok(admitted)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self.quota.counts();
        if let Some(running) = counts.get_mut(&self.user) {
            *running -= 1;
            if *running == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(rpm: u32, max_in_flight: usize) -> Arc<UserQuota> {
        Arc::new(UserQuota::new(UserLimits {
            rpm: NonZeroU32::new(rpm),
            max_in_flight,
        }))
    }

    #[test]
    fn a_burst_of_rpm_calls_then_a_wait() {
        let quota = quota(3, 100);
        let user = UserId::from_email("rate@example.com");
        for _ in 0..3 {
            drop(quota.admit(user).unwrap());
        }
        let Err(Refusal::Rate { rpm, retry_after }) = quota.admit(user) else {
            panic!("the fourth call in a minute is refused");
        };
        assert_eq!(rpm, 3);
        // One call comes back every 20 s.
        assert!(retry_after > Duration::from_secs(15) && retry_after <= Duration::from_secs(20));
        let other = UserId::from_email("other@example.com");
        assert!(
            quota.admit(other).is_ok(),
            "another user has their own bucket"
        );
    }

    #[test]
    fn running_calls_are_counted_until_dropped() {
        let quota = quota(0, 2);
        let user = UserId::from_email("busy@example.com");
        let first = quota.admit(user).unwrap();
        let _second = quota.admit(user).unwrap();
        assert_eq!(quota.running(&user), 2);
        assert_eq!(quota.admit(user).unwrap_err(), Refusal::InFlight { max: 2 });
        drop(first);
        assert!(quota.admit(user).is_ok());
    }

    #[test]
    fn a_refused_call_frees_its_place() {
        let quota = quota(1, 1);
        let user = UserId::from_email("free@example.com");
        drop(quota.admit(user).unwrap());
        assert!(matches!(quota.admit(user), Err(Refusal::Rate { .. })));
        assert_eq!(quota.running(&user), 0, "the refused call holds nothing");
    }
}
