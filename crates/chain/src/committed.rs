//! The committed height, watched by the tasks that follow the chain.
//!
//! `tokio::sync::watch` would do, but its receivers register on one of eight notifiers chosen
//! by tokio's thread-local random source, so the order in which a commit wakes its watchers
//! (the records keeper, the epoch driver, waiting API calls) changed from run to run and a
//! seeded simulation did not replay. One `tokio::sync::Notify` wakes its waiters in the order
//! they registered, which a seeded run repeats.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};
use tokio::sync::Notify;

#[derive(Default)]
struct Shared {
    height: AtomicU64,
    notify: Notify,
}

/// The writer's side: the finalizer publishes each committed height.
#[derive(Clone, Default)]
pub struct Committed(Arc<Shared>);

impl Committed {
    pub fn new(height: u64) -> Self {
        let committed = Self::default();
        committed.0.height.store(height, Ordering::Release);
        committed
    }

    /// Publish `height` and wake every watcher.
    pub fn publish(&self, height: u64) {
        self.0.height.store(height, Ordering::Release);
        self.0.notify.notify_waiters();
    }

    /// A watcher that has seen the height as it is now.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            seen: self.0.height.load(Ordering::Acquire),
            shared: self.0.clone(),
        }
    }
}

/// One watcher of the committed height.
pub struct Subscription {
    shared: Arc<Shared>,
    seen: u64,
}

impl Subscription {
    /// Wait until the height differs from the one last seen (at once if it already does), and
    /// mark the new one seen.
    pub async fn changed(&mut self) {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so a publish between the check and the wait is not lost.
            notified.as_mut().enable();
            let height = self.shared.height.load(Ordering::Acquire);
            if height != self.seen {
                self.seen = height;
                return;
            }
            notified.await;
        }
    }

    /// The height now, marked as seen.
    pub fn borrow_and_update(&mut self) -> u64 {
        self.seen = self.shared.height.load(Ordering::Acquire);
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt as _;

    #[test]
    fn a_watcher_wakes_on_a_new_height_and_not_before() {
        let committed = Committed::new(3);
        let mut watcher = committed.subscribe();
        assert!(watcher.changed().now_or_never().is_none());
        committed.publish(4);
        assert!(watcher.changed().now_or_never().is_some());
        assert_eq!(watcher.borrow_and_update(), 4);
        assert!(watcher.changed().now_or_never().is_none());
        committed.publish(5);
        assert!(watcher.changed().now_or_never().is_some());
        assert!(
            watcher.changed().now_or_never().is_none(),
            "changed marks the height seen"
        );
    }

    #[test]
    fn a_publish_while_waiting_wakes_the_waiter() {
        let committed = Committed::new(0);
        let mut watcher = committed.subscribe();
        let mut waiting = Box::pin(watcher.changed());
        assert!((&mut waiting).now_or_never().is_none());
        committed.publish(1);
        assert!(waiting.now_or_never().is_some());
    }
}
