//! Forward marshal's block updates from its synchronous `report` to the finalizer task.

use commonware_actor::Feedback;
use commonware_consensus::{Reporter, marshal::Update};
use ehrchain_types::Block;
use futures::channel::mpsc;

pub type Receiver<T> = mpsc::UnboundedReceiver<T>;

/// Sends finalized blocks to the finalizer. The queue holds at most marshal's
/// `max_pending_acks` blocks, because marshal waits for acknowledgements before sending more;
/// tips are dropped here, since the finalizer does not use them.
#[derive(Clone)]
pub struct Forwarder<T> {
    sender: mpsc::UnboundedSender<T>,
}

pub fn channel<T>() -> (Forwarder<T>, Receiver<T>) {
    let (sender, receiver) = mpsc::unbounded();
    (Forwarder { sender }, receiver)
}

impl Reporter for Forwarder<Update<Block>> {
    type Activity = Update<Block>;

    fn report(&mut self, activity: Self::Activity) -> Feedback {
        if matches!(activity, Update::Tip(..)) {
            return Feedback::Ok;
        }
        match self.sender.unbounded_send(activity) {
            Ok(()) => Feedback::Ok,
            Err(_) => Feedback::Closed,
        }
    }
}
