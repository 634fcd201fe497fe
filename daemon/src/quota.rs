//! Per-user limits on tool calls, over every connection of every daemon
//! on one store: calls per minute (`EXAI_USER_RPM`) and calls running at
//! once (`EXAI_USER_MAX_INFLIGHT`). One user's flood is refused at the
//! door, so it cannot take the daemons' time from anyone else.
//!
//! Each daemon enforces both limits itself (the rate as a GCRA token
//! bucket per user, `governor`: a burst of up to `rpm` calls, refilled
//! evenly over the minute), and takes its share of the user's budget over
//! all daemons from the store ([`UserBudgets`]) in slices, so that a call
//! costs no store write while its slice lasts:
//!
//! - **Calls**: a slice is a tenth of `rpm` (at least one call) out of the
//!   user's bucket in the store, spent locally within [`CALL_SLICE_TTL`];
//!   what is left of it then lapses. The daemons together admit at most
//!   what the one bucket grants, plus at most one slice per daemon leased
//!   just before (the documented overshoot: N daemons × slice).
//! - **Running calls**: a daemon holds slots of the user's
//!   `max_in_flight`, leased when its calls need more and given back
//!   [`SLOT_KEEP`] after they end, in one batched write per second for all
//!   users. So a slot a daemon no longer uses is free for the others
//!   within about three seconds.
//!
//! When the store cannot be reached, each daemon's own limits are the only
//! ones (a user may then get this much from each daemon); the first
//! failure is logged.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exai_auth::UserId;
use exai_sessions::{LeaseRequest, UserBudgets};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

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

/// How long a slice of calls leased from the store may be spent.
pub(crate) const CALL_SLICE_TTL: Duration = Duration::from_secs(6);

/// How long a daemon keeps a running-call slot after the call ends, for
/// the user's next call.
pub(crate) const SLOT_KEEP: Duration = Duration::from_secs(2);

/// After the store fails a lease, how long calls are admitted by this
/// daemon's limits alone before it is asked again (so an outage costs
/// calls no store timeout each).
const LEASE_BACKOFF: Duration = Duration::from_secs(5);

/// How often slots no longer used are given back.
const RELEASE_EVERY: Duration = Duration::from_secs(1);

/// The calls of a slice: a tenth of the rate, at least one.
fn call_slice(rpm: NonZeroU32) -> u32 {
    rpm.get().div_ceil(10)
}

/// One user's calls on this daemon, and what it holds of their budget.
#[derive(Debug, Default)]
struct Account {
    /// Calls running here.
    running: usize,
    /// Running-call slots leased from the store.
    slots: u32,
    /// Calls leased from the store and not spent, until `calls_until`.
    calls: u32,
    calls_until: Option<Instant>,
    /// When the last call ended, for [`SLOT_KEEP`].
    last_end: Option<Instant>,
    /// One lease at a time per user; the others wait for its answer.
    leasing: Arc<tokio::sync::Mutex<()>>,
}

impl Account {
    /// What the store must grant before one more call (counted in
    /// `running` already) may run: `(calls, slots)`.
    fn wanted(&self, rpm: Option<NonZeroU32>, now: Instant) -> (u32, u32) {
        let calls = match rpm {
            Some(rpm) if self.calls == 0 || self.calls_until.is_none_or(|until| until <= now) => {
                call_slice(rpm)
            }
            _ => 0,
        };
        let slots = u32::try_from(self.running)
            .unwrap_or(u32::MAX)
            .saturating_sub(self.slots);
        (calls, slots)
    }

    /// Spends one leased call (when the rate is limited).
    fn spend(&mut self, rpm: Option<NonZeroU32>) {
        if rpm.is_some() {
            self.calls = self.calls.saturating_sub(1);
        }
    }

    /// Nothing running, held or leased: the account can go.
    fn is_empty(&self, now: Instant) -> bool {
        self.running == 0
            && self.slots == 0
            && (self.calls == 0 || self.calls_until.is_none_or(|until| until <= now))
            && Arc::strong_count(&self.leasing) == 1
    }
}

/// The per-user gate.
#[derive(Debug)]
pub(crate) struct UserQuota {
    limits: UserLimits,
    rate: Option<DefaultKeyedRateLimiter<UserId>>,
    budgets: Arc<dyn UserBudgets>,
    accounts: Mutex<HashMap<UserId, Account>>,
    /// Slots given back locally whose release the store has not taken yet.
    owed: Mutex<HashMap<UserId, u32>>,
    admitted: AtomicU32,
    /// The store failed a lease (logged once until it answers again).
    store_failing: AtomicBool,
    /// Until when leases are not asked for, after a failure.
    backoff_until: Mutex<Option<Instant>>,
}

/// A call's place among its user's running calls; freed on drop.
#[derive(Debug)]
pub(crate) struct Admitted {
    quota: Arc<UserQuota>,
    user: UserId,
}

impl UserQuota {
    /// The gate for `limits`, sharing the budgets of every daemon on
    /// `budgets`.
    pub(crate) fn new(limits: UserLimits, budgets: Arc<dyn UserBudgets>) -> Self {
        UserQuota {
            limits,
            rate: limits
                .rpm
                .map(|rpm| RateLimiter::keyed(Quota::per_minute(rpm))),
            budgets,
            accounts: Mutex::new(HashMap::new()),
            owed: Mutex::new(HashMap::new()),
            admitted: AtomicU32::new(0),
            store_failing: AtomicBool::new(false),
            backoff_until: Mutex::new(None),
        }
    }

    pub(crate) fn limits(&self) -> UserLimits {
        self.limits
    }

    /// How many calls `user` has running on this daemon now.
    pub(crate) fn running(&self, user: &UserId) -> usize {
        self.accounts().get(user).map_or(0, |a| a.running)
    }

    fn accounts(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Account>> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn owed(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, u32>> {
        self.owed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn backoff(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.backoff_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the store failed a lease within [`LEASE_BACKOFF`].
    fn backing_off(&self) -> bool {
        self.backoff().is_some_and(|until| Instant::now() < until)
    }

    /// Lets one call of `user` in, or says why not: this daemon's limits
    /// first, then the user's budget over all daemons. A call refused for
    /// running too many does not use up the user's rate.
    pub(crate) async fn admit(self: &Arc<Self>, user: UserId) -> Result<Admitted, Refusal> {
        let max = self.limits.max_in_flight;
        {
            let mut accounts = self.accounts();
            let account = accounts.entry(user).or_default();
            if account.running >= max {
                return Err(Refusal::InFlight { max });
            }
            account.running += 1;
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
        self.take_budget(user).await?;
        Ok(admitted)
    }

    /// Spends what this daemon holds of the user's budget for one call,
    /// leasing more from the store when it has too little.
    async fn take_budget(&self, user: UserId) -> Result<(), Refusal> {
        let rpm = self.limits.rpm;
        let leasing = {
            let mut accounts = self.accounts();
            let account = accounts.entry(user).or_default();
            if account.wanted(rpm, Instant::now()) == (0, 0) {
                account.spend(rpm);
                return Ok(());
            }
            account.leasing.clone()
        };
        if self.backing_off() {
            return Ok(());
        }
        let _one_at_a_time = leasing.lock().await;
        // Another call's lease may have brought enough meanwhile.
        let (calls, slots) = {
            let mut accounts = self.accounts();
            let account = accounts.entry(user).or_default();
            let wanted = account.wanted(rpm, Instant::now());
            if wanted == (0, 0) {
                account.spend(rpm);
                return Ok(());
            }
            wanted
        };
        let request = LeaseRequest {
            rpm: rpm.map_or(0, NonZeroU32::get),
            calls,
            max_in_flight: u32::try_from(self.limits.max_in_flight).unwrap_or(u32::MAX),
            slots,
        };
        let lease = match self.budgets.lease(&user, request).await {
            Ok(lease) => {
                if self.store_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("the store leases users' budgets again");
                }
                lease
            }
            Err(error) => {
                *self.backoff() = Some(Instant::now() + LEASE_BACKOFF);
                if !self.store_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %error,
                        "could not lease a user's budget from the store; until it answers, \
                         each daemon enforces EXAI_USER_RPM and EXAI_USER_MAX_INFLIGHT alone"
                    );
                }
                return Ok(());
            }
        };
        let mut accounts = self.accounts();
        let account = accounts.entry(user).or_default();
        account.slots += lease.slots;
        if lease.calls > 0 {
            account.calls = lease.calls;
            account.calls_until = Some(Instant::now() + CALL_SLICE_TTL);
        }
        if let (Some(rpm), true) = (rpm, calls > 0 && lease.calls == 0) {
            return Err(Refusal::Rate {
                rpm: rpm.get(),
                retry_after: lease.retry_after.max(Duration::from_millis(1)),
            });
        }
        if lease.slots < slots {
            return Err(Refusal::InFlight {
                max: self.limits.max_in_flight,
            });
        }
        account.spend(rpm);
        Ok(())
    }

    /// Takes back the slots kept past [`SLOT_KEEP`] (all of them when
    /// `everything`), with those the store has not taken yet.
    fn unused_slots(&self, everything: bool) -> Vec<(UserId, u32)> {
        let now = Instant::now();
        let mut owed = self.owed();
        let mut accounts = self.accounts();
        accounts.retain(|user, account| {
            let kept_enough = account
                .last_end
                .is_none_or(|end| now.duration_since(end) >= SLOT_KEEP);
            let running = u32::try_from(account.running).unwrap_or(u32::MAX);
            if (everything || kept_enough) && account.slots > running {
                *owed.entry(*user).or_default() += account.slots - running;
                account.slots = running;
            }
            !account.is_empty(now)
        });
        owed.iter().map(|(user, n)| (*user, *n)).collect()
    }

    /// Gives unused slots back to the store every second until `shutdown`,
    /// then all of them.
    pub(crate) async fn give_back_slots(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(RELEASE_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let last = tokio::select! {
                _ = ticks.tick() => false,
                () = shutdown.cancelled() => true,
            };
            let slots = self.unused_slots(last);
            if !slots.is_empty() {
                match self.budgets.release_slots(&slots).await {
                    Ok(()) => {
                        let mut owed = self.owed();
                        for (user, n) in &slots {
                            if let Some(left) = owed.get_mut(user) {
                                *left -= (*left).min(*n);
                                if *left == 0 {
                                    owed.remove(user);
                                }
                            }
                        }
                    }
                    // Kept, and given back at the next tick.
                    Err(error) => tracing::debug!(error = %error, "could not give slots back yet"),
                }
            }
            if last {
                return;
            }
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut accounts = self.quota.accounts();
        if let Some(account) = accounts.get_mut(&self.user) {
            account.running -= 1;
            account.last_end = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use exai_sessions::MemoryStore;

    fn quota(rpm: u32, max_in_flight: usize) -> Arc<UserQuota> {
        let limits = UserLimits {
            rpm: NonZeroU32::new(rpm),
            max_in_flight,
        };
        Arc::new(UserQuota::new(limits, Arc::new(MemoryStore::new())))
    }

    #[tokio::test]
    async fn a_burst_of_rpm_calls_then_a_wait() {
        let quota = quota(3, 100);
        let user = UserId::from_email("rate@example.com");
        for _ in 0..3 {
            drop(quota.admit(user).await.unwrap());
        }
        let Err(Refusal::Rate { rpm, retry_after }) = quota.admit(user).await else {
            panic!("the fourth call in a minute is refused");
        };
        assert_eq!(rpm, 3);
        // One call comes back every 20 s.
        assert!(retry_after > Duration::from_secs(15) && retry_after <= Duration::from_secs(20));
        let other = UserId::from_email("other@example.com");
        assert!(
            quota.admit(other).await.is_ok(),
            "another user has their own bucket"
        );
    }

    #[tokio::test]
    async fn running_calls_are_counted_until_dropped() {
        let quota = quota(0, 2);
        let user = UserId::from_email("busy@example.com");
        let first = quota.admit(user).await.unwrap();
        let _second = quota.admit(user).await.unwrap();
        assert_eq!(quota.running(&user), 2);
        assert_eq!(
            quota.admit(user).await.unwrap_err(),
            Refusal::InFlight { max: 2 }
        );
        drop(first);
        assert!(quota.admit(user).await.is_ok());
    }

    #[tokio::test]
    async fn a_refused_call_frees_its_place() {
        let quota = quota(1, 1);
        let user = UserId::from_email("free@example.com");
        drop(quota.admit(user).await.unwrap());
        assert!(matches!(quota.admit(user).await, Err(Refusal::Rate { .. })));
        assert_eq!(quota.running(&user), 0, "the refused call holds nothing");
    }

    /// Two daemons on one store: each has room by its own limits, but
    /// together they hold the user to theirs.
    #[tokio::test]
    async fn daemons_on_one_store_share_the_users_budget() {
        let store: Arc<dyn UserBudgets> = Arc::new(MemoryStore::new());
        let limits = UserLimits {
            rpm: None,
            max_in_flight: 2,
        };
        let one = Arc::new(UserQuota::new(limits, store.clone()));
        let two = Arc::new(UserQuota::new(limits, store.clone()));
        let user = UserId::from_email("both@example.com");
        let _a = one.admit(user).await.unwrap();
        let b = two.admit(user).await.unwrap();
        assert_eq!(
            one.admit(user).await.unwrap_err(),
            Refusal::InFlight { max: 2 },
            "the other daemon holds the second slot"
        );
        drop(b);
        assert_eq!(
            one.admit(user).await.unwrap_err(),
            Refusal::InFlight { max: 2 },
            "kept for a moment after the call ends"
        );
        let given = two.unused_slots(true);
        assert_eq!(given, [(user, 1)]);
        store.release_slots(&given).await.unwrap();
        assert!(
            one.admit(user).await.is_ok(),
            "given back: the slot is free"
        );
    }

    /// A store that is down, counting the leases asked of it.
    #[derive(Debug, Default)]
    struct Down(AtomicU32);

    #[async_trait::async_trait]
    impl UserBudgets for Down {
        async fn lease(
            &self,
            _: &UserId,
            _: LeaseRequest,
        ) -> Result<exai_sessions::Lease, exai_sessions::StoreError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Err(exai_sessions::StoreError::Unavailable("down".into()))
        }

        async fn release_slots(
            &self,
            _: &[(UserId, u32)],
        ) -> Result<(), exai_sessions::StoreError> {
            Err(exai_sessions::StoreError::Unavailable("down".into()))
        }
    }

    /// With the store down, this daemon's limits are the only ones, and
    /// calls do not each wait for the store to fail.
    #[tokio::test]
    async fn a_store_that_is_down_leaves_the_daemons_own_limits() {
        let down = Arc::new(Down::default());
        let limits = UserLimits {
            rpm: NonZeroU32::new(3),
            max_in_flight: 8,
        };
        let quota = Arc::new(UserQuota::new(limits, down.clone()));
        let user = UserId::from_email("outage@example.com");
        for _ in 0..3 {
            drop(quota.admit(user).await.unwrap());
        }
        assert!(matches!(quota.admit(user).await, Err(Refusal::Rate { .. })));
        assert_eq!(
            down.0.load(Ordering::Relaxed),
            1,
            "asked once, then backed off"
        );
    }

    #[tokio::test]
    async fn the_rate_over_two_daemons_is_one_bucket() {
        let store: Arc<dyn UserBudgets> = Arc::new(MemoryStore::new());
        let limits = UserLimits {
            rpm: NonZeroU32::new(10),
            max_in_flight: 100,
        };
        let daemons = [
            Arc::new(UserQuota::new(limits, store.clone())),
            Arc::new(UserQuota::new(limits, store.clone())),
        ];
        let user = UserId::from_email("rate-both@example.com");
        let mut admitted = 0;
        for i in 0..40 {
            if daemons[i % 2].admit(user).await.is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10, "the bucket's ten, whichever daemon asks");
    }
}
