//! Backpressure for a connection whose requests keep being refused.
//!
//! Refusing a request costs nearly what serving one does: reading,
//! parsing, dispatching and answering it. A client that floods past its
//! limits would take the daemon's CPU from everyone else. So the handler
//! tells the connection's [`Pace`] when it refuses a request for a limit
//! ([`Pace::refused`]) and when it serves one ([`Pace::served`]); after a
//! refusal the WebSocket reader waits before reading the next frame, twice
//! as long after each further refusal in a row (1 ms, 2 ms, … at most
//! [`MAX_PAUSE`]). The flooder's frames wait in its own socket buffer, and
//! TCP slows the flooder down; a served request ends the pause.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The longest pause between two reads of a connection being refused.
pub const MAX_PAUSE: Duration = Duration::from_millis(250);

/// One connection's pace. Cheap to clone: clones share it.
#[derive(Clone, Debug, Default)]
pub struct Pace(Arc<State>);

/// Two words per connection: an idle connection's cost is counted in
/// bytes (ARCHITECTURE.md).
#[derive(Debug, Default)]
struct State {
    /// Refusals in a row.
    refused: AtomicU32,
    /// Until when reading waits, in microseconds after [`ORIGIN`]; 0: it
    /// does not.
    until_micros: AtomicU64,
}

/// The instant pauses are counted from, for every connection.
static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

impl Pace {
    /// A request was refused for a limit: reading waits a little longer.
    pub fn refused(&self) {
        let streak = self.0.refused.fetch_add(1, Ordering::Relaxed).min(16);
        let pause = Duration::from_millis(1u64 << streak.min(8)).min(MAX_PAUSE);
        let until = self.elapsed() + pause;
        self.0
            .until_micros
            .store(until.as_micros().max(1) as u64, Ordering::Relaxed);
    }

    /// A request was served: reading goes at full speed again.
    pub fn served(&self) {
        if self.0.refused.swap(0, Ordering::Relaxed) != 0 {
            self.0.until_micros.store(0, Ordering::Relaxed);
        }
    }

    /// When reading may go on, if it must wait.
    pub(crate) fn paused_until(&self) -> Option<Instant> {
        let until = self.0.until_micros.load(Ordering::Relaxed);
        if until == 0 {
            return None;
        }
        let at = self.origin() + Duration::from_micros(until);
        (at > Instant::now()).then_some(at)
    }

    fn origin(&self) -> Instant {
        *ORIGIN.get_or_init(Instant::now)
    }

    fn elapsed(&self) -> Duration {
        self.origin().elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pauses_grow_with_refusals_and_end_when_served() {
        let pace = Pace::default();
        assert_eq!(pace.paused_until(), None);
        pace.refused();
        let first = pace.paused_until().expect("paused") - Instant::now();
        assert_eq!(first, Duration::from_millis(1));
        for _ in 0..3 {
            pace.refused();
        }
        let fourth = pace.paused_until().expect("paused") - Instant::now();
        assert_eq!(fourth, Duration::from_millis(8));
        for _ in 0..20 {
            pace.refused();
        }
        let most = pace.paused_until().expect("paused") - Instant::now();
        assert_eq!(most, MAX_PAUSE);
        tokio::time::advance(MAX_PAUSE).await;
        assert_eq!(pace.paused_until(), None, "a pause ends by itself");
        pace.refused();
        pace.served();
        assert_eq!(pace.paused_until(), None);
        pace.refused();
        let again = pace.paused_until().expect("paused") - Instant::now();
        assert_eq!(again, Duration::from_millis(1), "the streak starts over");
    }
}
