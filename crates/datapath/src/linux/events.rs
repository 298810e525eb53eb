//! The task that drains the event ring buffer into decoded [`MonitorEvent`]s.

use aya::maps::{MapData, RingBuf};
use ciliate_model::monitor::MonitorEvent;
use tokio::io::unix::AsyncFd;
use tokio::sync::broadcast;
use tracing::{debug, warn};

use crate::events::{self, Clock};
use crate::DatapathError;

/// How often the agent drains the event ring when the programs have not woken it.
const EVENTS_DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

fn drain(ring: &mut RingBuf<MapData>, clock: &Clock, tx: &broadcast::Sender<MonitorEvent>) {
    while let Some(item) = ring.next() {
        match events::decode(&item, clock) {
            // No subscriber is not an error: events are only kept for listeners.
            Ok(ev) => drop(tx.send(ev)),
            Err(e) => debug!(error = %e, "undecodable datapath event"),
        }
    }
}

pub(super) fn spawn_event_reader(
    ring: RingBuf<MapData>,
    tx: broadcast::Sender<MonitorEvent>,
) -> Result<(), DatapathError> {
    // SAFETY: the RingBuf owns its map fd and never changes it; the AsyncFd owns the RingBuf,
    // so the fd stays open and the same for the AsyncFd's whole life.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| DatapathError::kernel("poll ring buffer", e.into_parts().1))?;
    tokio::spawn(async move {
        let clock = Clock::now();
        // The programs do not wake us per event (see events.h): drain on a short timer, and
        // at once when they do wake us because the ring is filling up.
        let mut tick = tokio::time::interval(EVENTS_DRAIN_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ready = fd.readable_mut() => match ready {
                    Ok(mut guard) => {
                        drain(guard.get_inner_mut(), &clock, &tx);
                        guard.clear_ready();
                    }
                    Err(e) => {
                        warn!(error = %e, "event ring buffer: poll failed; events stop");
                        return;
                    }
                },
                _ = tick.tick() => drain(fd.get_mut(), &clock, &tx),
            }
        }
    });
    Ok(())
}
