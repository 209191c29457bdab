//! Shedding by waiting time: when the oldest publish still waiting for the
//! broker's acks has waited longer than `--max-queue-delay`, new publishes
//! are refused with RESOURCE_EXHAUSTED and RetryInfo until it is answered.
//!
//! More callers than the broker can serve would otherwise all be admitted
//! (the in-flight bounds are about memory, and a few large batches never
//! reach them) and every caller's latency would grow with the queue. Records
//! leave librdkafka's queue in order per partition, so when the oldest has
//! waited this long, a new one would wait about as long: it is cheaper for
//! everyone to refuse it now. A single slow call is enough to trip it for a
//! moment, which costs a retry, not an event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The publishes waiting for acks, by the order they started in.
#[derive(Clone)]
pub struct Backlog {
    /// `None`: never shed by waiting time.
    max_delay: Option<Duration>,
    waiting: Arc<Mutex<Waiting>>,
}

#[derive(Default)]
struct Waiting {
    next: u64,
    started: BTreeMap<u64, Instant>,
}

/// A publish waiting for its acks; it leaves the backlog when dropped.
pub struct Entry {
    id: u64,
    waiting: Arc<Mutex<Waiting>>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Ok(mut w) = self.waiting.lock() {
            w.started.remove(&self.id);
        }
    }
}

impl Backlog {
    /// `max_delay` zero turns shedding by waiting time off.
    pub fn new(max_delay: Duration) -> Self {
        Self {
            max_delay: (!max_delay.is_zero()).then_some(max_delay),
            waiting: Arc::default(),
        }
    }

    /// How long the oldest waiting publish has waited, when that is past the
    /// bound (the publish about to start should be refused).
    pub fn over(&self) -> Option<Duration> {
        let max = self.max_delay?;
        let waited = self
            .waiting
            .lock()
            .ok()?
            .started
            .first_key_value()
            .map(|(_, at)| at.elapsed())?;
        (waited > max).then_some(waited)
    }

    /// Registers a publish that starts waiting for acks now.
    pub fn enter(&self) -> Option<Entry> {
        self.max_delay?;
        let mut w = self.waiting.lock().ok()?;
        let id = w.next;
        w.next += 1;
        w.started.insert(id, Instant::now());
        Some(Entry {
            id,
            waiting: self.waiting.clone(),
        })
    }

    pub fn max_delay(&self) -> Option<Duration> {
        self.max_delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_only_while_the_oldest_waits_too_long() {
        let b = Backlog::new(Duration::from_millis(30));
        assert_eq!(b.over(), None, "an empty backlog sheds nothing");
        let old = b.enter();
        std::thread::sleep(Duration::from_millis(5));
        let young = b.enter();
        assert_eq!(b.over(), None);
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.over().is_some_and(|w| w > Duration::from_millis(30)));
        drop(old);
        // The younger one is now the oldest, and has waited too long too.
        assert!(b.over().is_some());
        drop(young);
        assert_eq!(b.over(), None, "answered publishes leave the backlog");
    }

    #[test]
    fn zero_turns_it_off() {
        let b = Backlog::new(Duration::ZERO);
        assert!(b.enter().is_none());
        assert_eq!(b.over(), None);
    }
}
