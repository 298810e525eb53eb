//! Link events of the node's network namespace, from the kernel as they happen: an rtnetlink
//! socket subscribed to the `RTNLGRP_LINK` multicast group. The agent learns of a pod veth that
//! vanished (its pod's namespace was deleted without a CNI DEL) or changed, without polling.
//!
//! A netlink socket can drop multicast messages when its reader falls behind; the agent's
//! periodic endpoint check catches what a lost message would have told.

use futures::StreamExt;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{new_multicast_connection, MulticastGroup};
use tokio::sync::mpsc;

use crate::DatapathError;

/// A change of a link in the node's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// The link was deleted (or left the namespace).
    Removed {
        /// Its interface index.
        ifindex: u32,
        /// Its name, when the message carried it.
        ifname: String,
    },
    /// The link was created or changed (flags, programs, state).
    Changed {
        /// Its interface index.
        ifindex: u32,
        /// Its name, when the message carried it.
        ifname: String,
    },
}

impl LinkEvent {
    /// The interface index the event is about.
    pub fn ifindex(&self) -> u32 {
        match self {
            Self::Removed { ifindex, .. } | Self::Changed { ifindex, .. } => *ifindex,
        }
    }
}

fn name_of(msg: &LinkMessage) -> String {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Subscribes to link events of the calling thread's network namespace. Call inside a tokio
/// runtime: the socket is driven by a task that ends when the receiver is dropped.
pub fn watch() -> Result<mpsc::UnboundedReceiver<LinkEvent>, DatapathError> {
    let (conn, _handle, mut messages) = new_multicast_connection(&[MulticastGroup::Link])
        .map_err(|e| DatapathError::kernel("subscribe to rtnetlink link events", e))?;
    let driver = tokio::spawn(conn);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let event = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                    LinkEvent::Removed {
                        ifindex: m.header.index,
                        ifname: name_of(&m),
                    }
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                    LinkEvent::Changed {
                        ifindex: m.header.index,
                        ifname: name_of(&m),
                    }
                }
                _ => continue,
            };
            if tx.send(event).is_err() {
                break;
            }
        }
        driver.abort();
    });
    Ok(rx)
}
