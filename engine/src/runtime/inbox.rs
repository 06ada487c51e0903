//! A shard's inbox: the one lock-free queue through which other shards, the signal thread and
//! broker threads reach it. Crosses shards (Send): each shard owns the consuming end; any
//! thread may push.
//!
//! Producers wake the consumer only when it has parked, so a burst of messages costs one
//! wake-up, and the consumer drains everything queued per turn.

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use crossbeam::queue::ArrayQueue;
use futures::task::AtomicWaker;

pub struct Inbox<T> {
    queue: ArrayQueue<T>,
    waker: AtomicWaker,
    parked: AtomicBool,
}

impl<T: Send> Inbox<T> {
    pub fn new(capacity: usize) -> Self {
        Inbox {
            queue: ArrayQueue::new(capacity),
            waker: AtomicWaker::new(),
            parked: AtomicBool::new(false),
        }
    }

    /// Queues `msg`; gives it back when the inbox is full so the caller can back off.
    pub fn push(&self, msg: T) -> Result<(), T> {
        self.queue.push(msg)?;
        if self.parked.swap(false, Ordering::AcqRel) {
            self.waker.wake();
        }
        Ok(())
    }

    /// Takes up to `max` queued messages into `out`; Pending (with the waker registered) when
    /// nothing is queued.
    pub fn poll_drain(&self, cx: &mut Context<'_>, out: &mut Vec<T>, max: usize) -> Poll<()> {
        let mut took = self.drain(out, max);
        if took == 0 {
            self.waker.register(cx.waker());
            self.parked.store(true, Ordering::Release);
            // A push between the first drain and `parked = true` saw parked == false and did
            // not wake us: look once more before sleeping.
            took = self.drain(out, max);
            if took == 0 {
                return Poll::Pending;
            }
            self.parked.store(false, Ordering::Release);
        }
        Poll::Ready(())
    }

    fn drain(&self, out: &mut Vec<T>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            match self.queue.pop() {
                Some(m) => {
                    out.push(m);
                    n += 1;
                }
                None => break,
            }
        }
        n
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn wakes_once_after_park_and_drains_in_batches() {
        let inbox = Inbox::new(8);
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = std::task::Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        assert!(inbox.poll_drain(&mut cx, &mut out, 16).is_pending());
        inbox.push(1).unwrap();
        assert!(flag.0.swap(false, Ordering::SeqCst));
        inbox.push(2).unwrap();
        assert!(
            !flag.0.load(Ordering::SeqCst),
            "second push must not wake again"
        );
        assert!(inbox.poll_drain(&mut cx, &mut out, 16).is_ready());
        assert_eq!(out, vec![1, 2]);
    }

    #[test]
    fn full_inbox_gives_the_message_back() {
        let inbox = Inbox::new(1);
        inbox.push(1).unwrap();
        assert_eq!(inbox.push(2), Err(2));
    }
}
