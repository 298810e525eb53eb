//! The queue of [`ProxyEvent`]s from every connection to the control socket's writer.
//!
//! Records (HTTP, DNS, Kafka) are many and can wait for the next batch, so sending one wakes
//! nobody: the writer, once woken by the first record of a batch, sleeps its linger without
//! watching the queue and then takes what gathered. Anything else (a DNS answer held until the
//! agent allows it) also rings a bell that ends the linger at once. On this VM a wakeup of the
//! control thread from a connection's thread (an eventfd write, an `epoll_wait` return and a
//! context switch) cost more than a request's own socket work; records paid one each.

use std::sync::Arc;

use ciliate_model::l7::ProxyEvent;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::Notify;

/// The sending side, shared by every connection (see the module's doc).
#[derive(Clone, Debug)]
pub struct EventSender {
    queue: mpsc::Sender<ProxyEvent>,
    urgent: Arc<Notify>,
}

impl From<mpsc::Sender<ProxyEvent>> for EventSender {
    fn from(queue: mpsc::Sender<ProxyEvent>) -> Self {
        Self {
            queue,
            urgent: Arc::new(Notify::new()),
        }
    }
}

impl EventSender {
    /// Queues `ev` without waiting; an error when the queue is full (or its reader gone).
    pub fn try_send(&self, ev: ProxyEvent) -> Result<(), TrySendError<ProxyEvent>> {
        let urgent = !is_record(&ev);
        self.queue.try_send(ev)?;
        if urgent {
            self.urgent.notify_one();
        }
        Ok(())
    }

    /// Completes after an event that is not a record was queued (at once if one was queued
    /// since the last call).
    pub async fn urgent(&self) {
        self.urgent.notified().await;
    }
}

/// A request's, answer's or message's record: it may wait for the batch.
pub fn is_record(ev: &ProxyEvent) -> bool {
    matches!(
        ev,
        ProxyEvent::Http(_) | ProxyEvent::Dns(_) | ProxyEvent::Kafka(_)
    )
}
