//! Failure detection per gestor (one URL), not per ring position.
//!
//! A gestor holds several virtual nodes, and every one of ours may have
//! several of its positions as successors, predecessor or fingers. Waiting
//! out a timeout for each of them, one after another on the maintenance
//! thread, made a dead gestor take tens of seconds to leave the ring (its
//! keys unserved meanwhile). Here a failed request marks the URL failing:
//! until its retry time, requests to it are skipped at once
//! (`Failure::Skipped`, no miss), and after `dead_after` real attempts in a
//! row have failed the caller drops every position at that URL. Plain code:
//! the plugin supplies the clock and does the sending.
//!
//! A timeout is not evidence of death on its own: an overloaded gestor's
//! workers may all be busy while the process is fine. So before a timeout
//! counts, the plugin pings the gestor (`node.ping`, answered on its
//! transport's I/O thread, not by a worker) and records the verdict here;
//! a verdict stays fresh for one retry cycle, so a dead gestor costs one
//! ping per cycle, not one per request that timed out. That benefit of the
//! doubt lasts [`SLOW_GRACE_ATTEMPTS`] RPC timeouts from the first timeout
//! forgiven: a gestor that answers pings but no request for that long (its
//! workers wedged) counts as failing again, so that its keys go to a
//! gestor that serves them.

use std::collections::HashMap;

/// Failing URLs remembered at most; beyond it the one retried soonest is
/// forgotten (it would be tried again shortly anyway).
const MAX_FAILING: usize = 1024;

/// How many RPC timeouts' worth of time a gestor that answers pings but
/// not requests is taken for slow rather than failing (20 s with the
/// default 1 s timeout).
pub const SLOW_GRACE_ATTEMPTS: u64 = 20;

#[derive(Debug, Clone, Copy)]
struct Failing {
    /// Real attempts that failed in a row.
    fails: u32,
    /// No request is sent before this time (ms).
    retry_at: u64,
    /// When the last failure was counted.
    counted_at: u64,
    /// The silent ping (its time) behind the last silent failure counted:
    /// the timeouts that ping confirms count once.
    counted_ping: Option<u64>,
}

pub struct Liveness {
    failing: HashMap<String, Failing>,
    /// The last ping's verdict per URL: (when, answered).
    pinged: HashMap<String, (u64, bool)>,
    /// Since when each URL has answered pings but not requests.
    slow_since: HashMap<String, u64>,
    dead_after: u32,
    /// Wait after a failure before the next real attempt.
    retry_after_ms: u64,
    /// Longest a real attempt takes: while one is out, others are skipped.
    attempt_ms: u64,
}

/// What to do with a request to a URL.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    Send,
    Skip,
}

impl Liveness {
    pub fn new(dead_after: u32, retry_after_ms: u64, attempt_ms: u64) -> Liveness {
        Liveness {
            failing: HashMap::new(),
            pinged: HashMap::new(),
            slow_since: HashMap::new(),
            dead_after: dead_after.max(1),
            retry_after_ms,
            attempt_ms,
        }
    }

    /// Whether to send a request to `url` now. Granting an attempt to a
    /// failing URL holds the others back until it is over.
    pub fn gate(&mut self, url: &str, now_ms: u64) -> Gate {
        match self.failing.get_mut(url) {
            None => Gate::Send,
            Some(f) if now_ms >= f.retry_at => {
                f.retry_at = now_ms + self.attempt_ms + self.retry_after_ms;
                Gate::Send
            }
            Some(_) => Gate::Skip,
        }
    }

    /// `url` answered a request: it is alive and serving.
    pub fn answered(&mut self, url: &str) {
        self.failing.remove(url);
        self.slow_since.remove(url);
    }

    /// A request to `url` timed out but `url` answers pings: whether to
    /// forgive the timeout (no failure counted), which it is until
    /// [`SLOW_GRACE_ATTEMPTS`] RPC timeouts after the first one forgiven
    /// without a request answered since.
    pub fn forgive(&mut self, url: &str, now_ms: u64) -> bool {
        make_room(&mut self.slow_since, url, |since| *since);
        let since = *self.slow_since.entry(url.to_string()).or_insert(now_ms);
        now_ms.saturating_sub(since) < SLOW_GRACE_ATTEMPTS * self.attempt_ms
    }

    /// What a ping to `url` found at `now_ms`.
    pub fn pinged(&mut self, url: &str, now_ms: u64, answered: bool) {
        make_room(&mut self.pinged, url, |(at, _)| *at);
        self.pinged.insert(url.to_string(), (now_ms, answered));
        if answered {
            // Alive, so not failing; whether it serves is `forgive`'s.
            self.failing.remove(url);
        }
    }

    /// The verdict of a ping to `url` less than one retry cycle old, if any.
    pub fn recent_ping(&self, url: &str, now_ms: u64) -> Option<bool> {
        self.fresh_ping(url, now_ms).map(|(_, answered)| answered)
    }

    /// (when, answered) of the last ping to `url`, if less than one retry
    /// cycle old.
    fn fresh_ping(&self, url: &str, now_ms: u64) -> Option<(u64, bool)> {
        let fresh_for = self.attempt_ms + self.retry_after_ms;
        self.pinged
            .get(url)
            .copied()
            .filter(|(at, _)| now_ms.saturating_sub(*at) < fresh_for)
    }

    /// A real attempt to reach `url` failed. True when it has now failed
    /// `dead_after` times in a row: the caller drops the gestor.
    pub fn failed(&mut self, url: &str, now_ms: u64) -> bool {
        // The one retried soonest goes first: it would be tried again shortly anyway.
        make_room(&mut self.failing, url, |f| f.retry_at);
        let f = self.failing.entry(url.to_string()).or_insert(Failing {
            fails: 0,
            retry_at: 0,
            counted_at: 0,
            counted_ping: None,
        });
        f.fails = f.fails.saturating_add(1);
        f.retry_at = now_ms + self.retry_after_ms;
        f.counted_at = now_ms;
        f.fails >= self.dead_after
    }

    /// A request to `url` timed out and a ping to it went unanswered. Like
    /// [`Liveness::failed`], except that requests that were out at once
    /// count as one failure: the maintenance thread's, lookups' and the
    /// copies other plugins report all time out together when the gestor's
    /// workers are busy, and one ping missed on a loaded machine must not
    /// make them `dead_after` failures in a row. Not counted: a timeout
    /// confirmed by the ping that confirmed the last one counted, or whose
    /// request was sent (`sent_ms`; unknown for a plugin's report, then
    /// taken as within one attempt) before that failure was counted. Each
    /// real attempt the gate grants afterwards starts later, so a dead
    /// gestor still reaches `dead_after`. `None` when not counted, else
    /// whether `url` is now dead.
    pub fn failed_silent(&mut self, url: &str, now_ms: u64, sent_ms: Option<u64>) -> Option<bool> {
        // A stale verdict confirms nothing now (a caller that could not
        // wait for a ping records none).
        let ping = self
            .fresh_ping(url, now_ms)
            .filter(|(_, answered)| !answered)
            .map(|(at, _)| at);
        if let Some(f) = self.failing.get(url) {
            let same_ping = ping.is_some() && f.counted_ping == ping;
            let overlapped = match sent_ms {
                Some(sent) => sent < f.counted_at,
                None => now_ms < f.counted_at + self.attempt_ms,
            };
            if same_ping || overlapped {
                return None;
            }
        }
        let dead = self.failed(url, now_ms);
        if let Some(f) = self.failing.get_mut(url) {
            f.counted_ping = ping;
        }
        Some(dead)
    }
}

/// Before `url` is added to `map`: keep it at most [`MAX_FAILING`]
/// entries, dropping the one whose time (`at`) is earliest.
fn make_room<V>(map: &mut HashMap<String, V>, url: &str, at: impl Fn(&V) -> u64) {
    if map.contains_key(url) || map.len() < MAX_FAILING {
        return;
    }
    let earliest = map
        .iter()
        .min_by_key(|(_, v)| at(v))
        .map(|(u, _)| u.clone());
    if let Some(u) = earliest {
        map.remove(&u);
    }
}

#[cfg(test)]
mod tests {
    use super::{Gate, Liveness, MAX_FAILING, SLOW_GRACE_ATTEMPTS};

    #[test]
    fn a_failing_url_is_skipped_until_its_retry_time() {
        let mut l = Liveness::new(3, 200, 500);
        assert_eq!(l.gate("a", 0), Gate::Send);
        assert!(!l.failed("a", 500));
        assert_eq!(l.gate("a", 600), Gate::Skip);
        assert_eq!(l.gate("b", 600), Gate::Send, "other URLs unaffected");
        assert_eq!(l.gate("a", 700), Gate::Send);
        // That attempt is out: the rest wait for it.
        assert_eq!(l.gate("a", 701), Gate::Skip);
    }

    #[test]
    fn dead_after_that_many_real_failures_in_a_row() {
        let mut l = Liveness::new(3, 200, 500);
        assert!(!l.failed("a", 0));
        assert!(!l.failed("a", 1000));
        assert!(l.failed("a", 2000));
        // One answer clears it.
        l.answered("a");
        assert_eq!(l.gate("a", 2001), Gate::Send);
        assert!(!l.failed("a", 3000));
    }

    #[test]
    fn timeouts_one_silent_ping_confirms_count_once() {
        let mut l = Liveness::new(3, 200, 500);
        l.pinged("a", 1000, false);
        assert_eq!(l.failed_silent("a", 1000, Some(500)), Some(false));
        // Requests that were out at the same time, confirmed by the same ping.
        for t in [1010, 1100, 1600] {
            assert_eq!(
                l.failed_silent("a", t, Some(t - 500)),
                None,
                "counted again at {t}"
            );
        }
        // Or by pings of their own, sent before the first was counted.
        l.pinged("a", 1300, false);
        assert_eq!(l.failed_silent("a", 1300, Some(800)), None);
        // A plugin's report, sending time unknown: within one attempt.
        l.pinged("a", 1400, false);
        assert_eq!(l.failed_silent("a", 1400, None), None);
        assert_eq!(l.failing["a"].fails, 1);
        // The next attempt the gate grants starts after the count: counted.
        l.pinged("a", 1800, false);
        assert_eq!(l.failed_silent("a", 1800, Some(1300)), Some(false));
        // A report with no ping of its own (its caller could not wait) once
        // the last verdict is stale: that verdict does not hold it back.
        assert_eq!(
            l.failed_silent("a", 2600, None),
            Some(true),
            "the third in a row"
        );
        // An answered ping restarts the count, and then each failure counts.
        let mut l = Liveness::new(2, 200, 500);
        l.pinged("c", 0, true);
        assert_eq!(l.failed_silent("c", 10, Some(0)), Some(false));
        assert!(l.failed("c", 20));
    }

    #[test]
    fn a_ping_verdict_stays_fresh_for_one_retry_cycle() {
        let mut l = Liveness::new(3, 200, 500);
        assert_eq!(l.recent_ping("a", 0), None);
        l.pinged("a", 1000, false);
        assert_eq!(l.recent_ping("a", 1699), Some(false));
        assert_eq!(l.recent_ping("a", 1700), None, "stale: ask again");
        assert_eq!(l.recent_ping("b", 1000), None, "other URLs unaffected");
        // An answered ping clears the failures too.
        assert!(!l.failed("a", 2000));
        assert!(!l.failed("a", 2300));
        l.pinged("a", 2400, true);
        assert_eq!(l.recent_ping("a", 2500), Some(true));
        assert!(!l.failed("a", 2600), "the count started again");
    }

    #[test]
    fn slow_is_forgiven_for_a_while_unless_a_request_is_answered() {
        let mut l = Liveness::new(3, 200, 500);
        let grace = SLOW_GRACE_ATTEMPTS * 500;
        assert!(l.forgive("a", 1000));
        assert!(l.forgive("a", 1000 + grace - 1));
        assert!(
            !l.forgive("a", 1000 + grace),
            "answers pings, serves nothing"
        );
        // A ping answered does not restart the grace; a request does.
        l.pinged("a", 1000 + grace + 1, true);
        assert!(!l.forgive("a", 1000 + grace + 2));
        l.answered("a");
        assert!(l.forgive("a", 1000 + grace + 3));
        assert!(l.forgive("b", 1000 + grace + 3), "other URLs unaffected");
    }

    #[test]
    fn bounded() {
        let mut l = Liveness::new(3, 200, 500);
        for i in 0..MAX_FAILING + 10 {
            l.failed(&format!("u{i}"), i as u64);
        }
        assert_eq!(l.failing.len(), MAX_FAILING);
        for i in 0..MAX_FAILING + 10 {
            l.pinged(&format!("u{i}"), i as u64, i % 2 == 0);
        }
        assert_eq!(l.pinged.len(), MAX_FAILING);
        for i in 0..MAX_FAILING + 10 {
            l.forgive(&format!("u{i}"), i as u64);
        }
        assert_eq!(l.slow_since.len(), MAX_FAILING);
        assert_eq!(l.recent_ping("u0", 100), None, "the oldest went first");
    }
}
