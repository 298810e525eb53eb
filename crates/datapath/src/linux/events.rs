//! The task that drains the event ring buffer: every event to the observer's sink as
//! numbers, and named into [`MonitorEvent`]s only for `ciliate monitor`'s receivers.

use std::sync::{Arc, OnceLock};

use aya::maps::{MapData, RingBuf};
use ciliate_model::monitor::{EventRecord, MonitorEvent};
use tokio::io::unix::AsyncFd;
use tokio::sync::broadcast;
use tracing::{debug, warn};

use crate::events::{self, Clock};
use crate::{DatapathError, EventSink};

/// How often the agent drains the event ring when the programs have not woken it.
const EVENTS_DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// Events handed to the sink at once at most (a full ring holds far more).
const SINK_BATCH: usize = 4096;

/// What the reader hands events to.
struct Outlets {
    monitor: broadcast::Sender<MonitorEvent>,
    sink: Arc<OnceLock<EventSink>>,
    batch: Vec<EventRecord>,
}

impl Outlets {
    fn drain(&mut self, ring: &mut RingBuf<MapData>, clock: &Clock) {
        // Naming an event allocates: done only while someone runs `ciliate monitor`.
        let monitor = self.monitor.receiver_count() > 0;
        let sink = self.sink.get().cloned();
        let sink = sink.as_ref();
        while let Some(item) = ring.next() {
            match events::decode_record(&item, clock) {
                Ok(record) => {
                    if monitor {
                        // No subscriber left is not an error: events are only kept for listeners.
                        drop(self.monitor.send(events::monitor_event(&record)));
                    }
                    if sink.is_some() {
                        self.batch.push(record);
                    }
                }
                Err(e) => debug!(error = %e, "undecodable datapath event"),
            }
            drop(item);
            if self.batch.len() >= SINK_BATCH {
                self.flush(sink);
            }
        }
        self.flush(sink);
    }

    fn flush(&mut self, sink: Option<&EventSink>) {
        if let Some(sink) = sink {
            if !self.batch.is_empty() {
                sink(&mut self.batch);
                self.batch.clear();
            }
        }
    }
}

pub(super) fn spawn_event_reader(
    ring: RingBuf<MapData>,
    monitor: broadcast::Sender<MonitorEvent>,
    sink: Arc<OnceLock<EventSink>>,
) -> Result<(), DatapathError> {
    // SAFETY: the RingBuf owns its map fd and never changes it; the AsyncFd owns the RingBuf,
    // so the fd stays open and the same for the AsyncFd's whole life.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| DatapathError::kernel("poll ring buffer", e.into_parts().1))?;
    tokio::spawn(async move {
        let clock = Clock::now();
        let mut out = Outlets {
            monitor,
            sink,
            batch: Vec::with_capacity(SINK_BATCH),
        };
        // The programs do not wake us per event (see events.h): drain on a short timer, and
        // at once when they do wake us because the ring is filling up.
        let mut tick = tokio::time::interval(EVENTS_DRAIN_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ready = fd.readable_mut() => match ready {
                    Ok(mut guard) => {
                        out.drain(guard.get_inner_mut(), &clock);
                        guard.clear_ready();
                    }
                    Err(e) => {
                        warn!(error = %e, "event ring buffer: poll failed; events stop");
                        return;
                    }
                },
                _ = tick.tick() => out.drain(fd.get_mut(), &clock),
            }
        }
    });
    Ok(())
}
