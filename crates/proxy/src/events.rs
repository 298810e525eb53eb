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
use ciliate_model::l7_wire::{self, FRAME_HEADER};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::Notify;

/// One item of the queue to the control socket's writer.
#[derive(Debug)]
pub enum Outgoing {
    /// An event, encoded by the writer.
    Event(ProxyEvent),
    /// A record already encoded as its frame (`ciliate_model::l7_wire`), written as it is.
    Frame(Vec<u8>),
}

impl From<ProxyEvent> for Outgoing {
    fn from(ev: ProxyEvent) -> Self {
        Self::Event(ev)
    }
}

impl Outgoing {
    /// The event, a frame decoded (for those who read the queue instead of the control
    /// socket: tests). A frame that does not decode is an error naming the field.
    pub fn into_event(self) -> Result<ProxyEvent, l7_wire::WireError> {
        match self {
            Self::Event(ev) => Ok(ev),
            Self::Frame(f) => match f.first() {
                Some(&kind) if f.len() >= FRAME_HEADER => {
                    l7_wire::decode_record(kind, &f[FRAME_HEADER..])
                }
                _ => Err(l7_wire::WireError::Truncated {
                    record: "frame",
                    field: "header",
                }),
            },
        }
    }

    /// Whether this may wait for the batch (see [`is_record`]).
    pub fn is_record(&self) -> bool {
        match self {
            Self::Event(ev) => is_record(ev),
            Self::Frame(_) => true,
        }
    }
}

/// The sending side, shared by every connection (see the module's doc).
#[derive(Clone, Debug)]
pub struct EventSender {
    queue: mpsc::Sender<Outgoing>,
    urgent: Arc<Notify>,
}

impl From<mpsc::Sender<Outgoing>> for EventSender {
    fn from(queue: mpsc::Sender<Outgoing>) -> Self {
        Self {
            queue,
            urgent: Arc::new(Notify::new()),
        }
    }
}

impl EventSender {
    /// Queues `ev` without waiting; an error when the queue is full (or its reader gone).
    pub fn try_send(&self, ev: ProxyEvent) -> Result<(), TrySendError<Outgoing>> {
        let urgent = !is_record(&ev);
        self.queue.try_send(Outgoing::Event(ev))?;
        if urgent {
            self.urgent.notify_one();
        }
        Ok(())
    }

    /// Queues an encoded record frame without waiting (a record: it wakes nobody).
    pub fn try_send_frame(&self, frame: Vec<u8>) -> Result<(), TrySendError<Outgoing>> {
        self.queue.try_send(Outgoing::Frame(frame))
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
        ProxyEvent::Http(_)
            | ProxyEvent::HttpFrame(_)
            | ProxyEvent::Dns(_)
            | ProxyEvent::DnsFrame(_)
            | ProxyEvent::Kafka(_)
    )
}
