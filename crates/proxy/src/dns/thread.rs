//! The thread that serves DNS: a runtime of its own, in the real-time class within its budget
//! when `--dns-realtime-budget` is set ([`crate::rt_budget`]; off by default).
//!
//! Why a thread of its own: the real-time class is for DNS's short, waited-on work only. On
//! the main thread it would also have covered the main thread's share of HTTP connections and
//! the control socket's writes to the agent (the records of a batch, every few milliseconds),
//! which are neither short nor waited on by a query. Records cross to the control socket's
//! writer by its queue, which wakes it once per batch ([`crate::events`]); a held answer's
//! FqdnAllowed comes back by a oneshot.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::{tcp, udp, DnsProxy};
use crate::rt_budget;

/// What the DNS thread serves, and how it runs.
#[derive(Debug)]
pub struct DnsThread {
    /// The proxy (policy, gate, timeouts).
    pub proxy: Arc<DnsProxy>,
    /// TCP listeners (moved to the thread's runtime).
    pub tcp: Vec<std::net::TcpListener>,
    /// The UDP socket.
    pub udp: Option<std::net::UdpSocket>,
    /// Share of one CPU in the real-time class, percent (0: ordinary class).
    pub realtime_budget: u8,
    /// The ordinary class's slice (also while over budget).
    pub slice: Duration,
}

impl DnsThread {
    /// Starts the thread. Once `stop` turns true it stops reading (queries not read wait in
    /// the sockets for the next proxy) and answers the queries in flight within `drain`; the
    /// receiver then says whether they all were.
    pub fn spawn(
        self,
        stop: watch::Receiver<bool>,
        drain: Duration,
    ) -> std::io::Result<oneshot::Receiver<bool>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("dns".into())
            .spawn(move || {
                match rt_budget::enter(self.realtime_budget, self.slice) {
                    Ok(()) if self.realtime_budget > 0 => info!(
                        budget_percent = self.realtime_budget,
                        "the DNS thread runs in the real-time class within its budget"
                    ),
                    Ok(()) => {}
                    Err(e) => warn!(
                        error = %e,
                        "--dns-realtime-budget: the DNS thread stays in the ordinary class"
                    ),
                }
                let drained = rt.block_on(self.serve(stop, drain));
                let _ = done_tx.send(drained);
            })?;
        Ok(done_rx)
    }

    async fn serve(self, mut stop: watch::Receiver<bool>, drain: Duration) -> bool {
        let mut loops = JoinSet::new();
        for l in self.tcp {
            match TcpListener::from_std(l) {
                Ok(l) => {
                    loops.spawn(tcp::serve(self.proxy.clone(), l, stop.clone()));
                }
                Err(e) => warn!(error = %e, "DNS TCP listener"),
            }
        }
        if let Some(s) = self.udp {
            loops.spawn(udp::serve(self.proxy.clone(), s, stop.clone()));
        }
        let _ = stop.wait_for(|stopped| *stopped).await;
        let drained = async {
            while let Some(Ok(mut set)) = loops.join_next().await {
                while set.join_next().await.is_some() {}
            }
        };
        tokio::time::timeout(drain, drained).await.is_ok()
    }
}
