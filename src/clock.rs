//! The agent's one time grid. Every periodic task (the IMDS pollers, the heartbeats, the state
//! reporter's rescan, the Docker watchdog, the engine's resync) waits for instants on it, so the
//! tasks due in the same second wake the process once between them instead of once each (issue 8's
//! idle CPU: at idle the agent's cost is its wake-ups, not its work).
//!
//! The grid points of a period are its whole multiples from one process-wide epoch. Periods of a
//! second or more are rounded down to the 64 ms slot of tokio's timer wheel: a deadline on a slot
//! boundary fires in the one wake-up that reaches its slot, where any other deadline first wakes
//! the process at the slot's start and then again at the deadline itself. [`start`] takes the epoch
//! just before the runtime is built, so the slots line up with the wheel's. A one-second period
//! therefore ticks after 0.960 or 1.024 s, exactly once per second on average.
//!
//! Owns only *when*; never what a tick does.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// tokio's timer wheel: level 0 has 1 ms slots, level 1 has 64 ms slots.
const SLOT_MS: u64 = 64;
/// Periods from this long are rounded to [`SLOT_MS`].
const ROUNDED_FROM_MS: u64 = 1000;

/// The grid every one-off deadline that need not be exact goes to (see [`at_or_after`]).
const SECOND: Duration = Duration::from_secs(1);

static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();

/// Fixes the grid's epoch. Call it just before building the runtime (its timer wheel counts from
/// then); without the call the epoch is the first use.
pub fn start() {
    EPOCH.get_or_init(std::time::Instant::now);
}

fn epoch() -> Instant {
    Instant::from_std(*EPOCH.get_or_init(std::time::Instant::now))
}

fn period_ms(period: Duration) -> u64 {
    (period.as_millis() as u64).max(1)
}

/// The `k`-th grid point of a period of `p` ms.
fn point(p: u64, k: u64) -> Instant {
    let ms = p.saturating_mul(k);
    let ms = if p >= ROUNDED_FROM_MS {
        ms - ms % SLOT_MS
    } else {
        ms
    };
    epoch() + Duration::from_millis(ms)
}

/// The smallest `k` whose grid point is at or after `at` (`strictly`: after `at`).
fn first_k(p: u64, at: Instant, strictly: bool) -> u64 {
    let ms = at.saturating_duration_since(epoch()).as_millis() as u64;
    // Rounding moves a point back by less than one slot, so the answer is ms/p or just above.
    let mut k = ms / p;
    loop {
        let t = point(p, k);
        if t > at || (!strictly && t == at) {
            return k;
        }
        k += 1;
    }
}

/// The first point of the one-second grid at or after `at`, for a deadline of something done every
/// `period`: where it goes when a little later costs nothing and a wake-up of its own does. A
/// period shorter than a second (tests) uses its own, finer grid instead.
pub fn at_or_after(at: Instant, period: Duration) -> Instant {
    let p = period_ms(period.min(SECOND));
    point(p, first_k(p, at, false))
}

type Timer = Pin<Box<Sleep>>;

/// Ticks on the grid points of one period: the first tick at once (as `tokio::time::interval`),
/// then at each grid point; points missed while the owner was busy are skipped, not made up.
/// Cancel-safe: a `tick` dropped before it completes leaves the ticker as it was.
///
/// The timer of the tick after next is armed one tick early. tokio wakes its own (parked) thread
/// through an eventfd whenever a timer is set earlier than every timer it knew of when it last
/// woke; a poller that sets its next tick, and a request deadline, only after its tick has fired
/// pays that write and an extra return from `epoll_wait` twice a tick. With the following tick's
/// timer already in the wheel, neither is earlier than it.
#[derive(Debug)]
pub struct Ticker {
    period_ms: u64,
    /// The next tick's grid index; `None` before the first tick.
    next: Option<u64>,
    /// Timers for ticks `next` and `next + 1`, kept between calls.
    armed: Option<(Timer, Timer)>,
}

impl Ticker {
    /// A ticker of `period` whose first tick completes at once.
    pub fn new(period: Duration) -> Ticker {
        Ticker {
            period_ms: period_ms(period),
            next: None,
            armed: None,
        }
    }

    /// Waits for the next tick.
    pub async fn tick(&mut self) {
        let p = self.period_ms;
        let k = match self.next {
            None => {
                self.next = Some(first_k(p, Instant::now(), true));
                return;
            }
            Some(k) => k,
        };
        let (due, ahead) = self.armed.get_or_insert_with(|| {
            (
                Box::pin(tokio::time::sleep_until(point(p, k))),
                Box::pin(tokio::time::sleep_until(point(p, k + 1))),
            )
        });
        std::future::poll_fn(|cx| {
            // Polled to be registered with the timer; its own firing only wakes this task.
            let _ = ahead.as_mut().poll(cx);
            due.as_mut().poll(cx)
        })
        .await;
        let next = first_k(p, Instant::now(), true).max(k + 1);
        self.armed = match self.armed.take() {
            // On time: the armed one is due next, and the one after is armed at the next call.
            Some((_, ahead)) if next == k + 1 => {
                Some((ahead, Box::pin(tokio::time::sleep_until(point(p, k + 2)))))
            }
            // Late: both timers are stale.
            _ => None,
        };
        self.next = Some(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn since_epoch_ms(t: Instant) -> u64 {
        t.duration_since(epoch()).as_millis() as u64
    }

    #[tokio::test(start_paused = true)]
    async fn a_one_second_ticker_ticks_once_a_second_on_slot_boundaries() {
        let mut t = Ticker::new(Duration::from_secs(1));
        let t0 = Instant::now();
        t.tick().await;
        assert_eq!(Instant::now(), t0, "the first tick is immediate");
        // (In a test the epoch may be younger than the paused clock's start: begin one tick on.)
        t.tick().await;
        let t0 = Instant::now();
        let mut last = t0;
        let mut gaps = Vec::new();
        for _ in 0..100 {
            t.tick().await;
            let now = Instant::now();
            assert_eq!(since_epoch_ms(now) % SLOT_MS, 0, "on a 64 ms slot boundary");
            gaps.push(now.duration_since(last).as_millis() as u64);
            last = now;
        }
        assert!(
            gaps.iter().all(|g| *g == 960 || *g == 1024),
            "gaps are one second rounded to a slot: {gaps:?}"
        );
        // 100 ticks after the first: 100 s, give or take less than one slot at either end.
        let total = last.duration_since(t0).as_millis() as i64;
        assert!((total - 100_000).abs() < 2 * SLOT_MS as i64, "{total} ms");
    }

    #[tokio::test(start_paused = true)]
    async fn tickers_of_different_periods_and_starts_meet_on_the_same_instants() {
        let mut one = Ticker::new(Duration::from_secs(1));
        one.tick().await;
        tokio::time::sleep(Duration::from_millis(1_337)).await;
        let mut five = Ticker::new(Duration::from_secs(5));
        five.tick().await;
        tokio::time::sleep(Duration::from_millis(420)).await;
        let mut ones = Vec::new();
        let mut fives = Vec::new();
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            tokio::select! {
                _ = one.tick() => ones.push(Instant::now()),
                _ = five.tick() => fives.push(Instant::now()),
            }
            if Instant::now() >= end {
                break;
            }
        }
        assert!(fives.len() >= 5, "{}", fives.len());
        for f in &fives {
            assert!(
                ones.contains(f),
                "every 5 s tick shares its instant with a 1 s tick"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn missed_ticks_are_skipped_and_a_dropped_tick_loses_nothing() {
        let mut t = Ticker::new(Duration::from_secs(1));
        t.tick().await;
        // Busy for 3.5 s: one tick comes at once, the next at the next grid point, not three in a
        // burst.
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        let before = Instant::now();
        t.tick().await;
        assert_eq!(Instant::now(), before, "the overdue tick at once");
        t.tick().await;
        let next = Instant::now();
        assert!(next > before, "then no second overdue tick");
        assert_eq!(since_epoch_ms(next) % SLOT_MS, 0, "but the next grid point");
        t.tick().await;
        let gap = Instant::now().duration_since(next).as_millis();
        assert!(gap == 960 || gap == 1024, "{gap} ms");
        // A tick dropped half way does not move the grid.
        let pending = t.next;
        let _ = tokio::time::timeout(Duration::from_millis(100), t.tick()).await;
        assert_eq!(t.next, pending);
        t.tick().await;
        // (The paused clock stops on the millisecond the wheel fires, within 1 ms after.)
        assert_eq!(
            since_epoch_ms(Instant::now()),
            since_epoch_ms(point(1000, pending.unwrap()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_off_deadlines_move_to_the_next_grid_point() {
        let now = Instant::now();
        for extra in [0u64, 1, 500, 999, 1000, 4_321, 20_000] {
            let at = now + Duration::from_millis(extra);
            let g = at_or_after(at, SECOND);
            assert!(g >= at);
            assert!(
                g - at < Duration::from_millis(1_024),
                "{extra}: {:?}",
                g - at
            );
            assert_eq!(since_epoch_ms(g) % SLOT_MS, 0);
            assert_eq!(at_or_after(g, SECOND), g, "a grid point is its own");
        }
        // Longer periods share the one-second grid.
        let at = now + Duration::from_millis(4_321);
        assert_eq!(
            at_or_after(at, Duration::from_secs(20)),
            at_or_after(at, SECOND)
        );
        // Short periods (tests) are not rounded.
        let g = at_or_after(now, Duration::from_millis(10));
        assert_eq!(since_epoch_ms(g) % 10, 0);
    }
}
