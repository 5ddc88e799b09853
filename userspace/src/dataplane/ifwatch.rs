//! Watching network interfaces (rtnetlink, in the agent's network namespace) so programs are
//! attached to pod-facing interfaces as the CNI creates them, whatever the CNI.

use futures::{StreamExt as _, TryStreamExt as _};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
};
use netlink_sys::{AsyncSocket as _, SocketAddr};
use tokio::sync::mpsc;

/// `--pod-interfaces` patterns: `*` matches any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    pub fn new(s: &str) -> Self {
        Self(s.to_owned())
    }

    pub fn matches(&self, name: &str) -> bool {
        fn m(p: &[u8], s: &[u8]) -> bool {
            match (p.first(), s.first()) {
                (None, None) => true,
                (Some(b'*'), _) => m(&p[1..], s) || (!s.is_empty() && m(p, &s[1..])),
                (Some(a), Some(b)) if a == b => m(&p[1..], &s[1..]),
                _ => false,
            }
        }
        m(self.0.as_bytes(), name.as_bytes())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfEvent {
    Up {
        name: String,
        index: u32,
    },
    Gone {
        name: String,
        index: u32,
    },
    /// Every interface that existed when the watch started has been sent.
    Listed,
}

fn name_of(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

const RTMGRP_LINK: u32 = 1;

/// Sends an event for every existing interface matching `globs`, then `Listed`, then an event
/// for every one that appears or goes. Runs until `tx` closes.
pub async fn watch(globs: Vec<Glob>, tx: mpsc::Sender<IfEvent>) -> std::io::Result<()> {
    let (mut conn, handle, mut messages) = rtnetlink::new_connection()?;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_LINK))?;
    tokio::spawn(conn);
    let wanted = |name: &str| globs.iter().any(|g| g.matches(name));
    let mut links = handle.link().get().execute();
    while let Some(link) = links
        .try_next()
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
    {
        if let Some(name) = name_of(&link).filter(|n| wanted(n)) {
            let index = link.header.index;
            if tx.send(IfEvent::Up { name, index }).await.is_err() {
                return Ok(());
            }
        }
    }
    if tx.send(IfEvent::Listed).await.is_err() {
        return Ok(());
    }
    while let Some((msg, _)) = messages.next().await {
        let event = match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => name_of(&link)
                .filter(|n| wanted(n))
                .map(|name| IfEvent::Up {
                    name,
                    index: link.header.index,
                }),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => name_of(&link)
                .filter(|n| wanted(n))
                .map(|name| IfEvent::Gone {
                    name,
                    index: link.header.index,
                }),
            _ => None,
        };
        if let Some(e) = event
            && tx.send(e).await.is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn globs() {
        for (g, name, want) in [
            ("veth*", "veth1", true),
            ("veth*", "eth0", false),
            ("lxc*", "lxc", true),
            ("*", "anything", true),
            ("cali*abc", "cali12abc", true),
            ("eth0", "eth0", true),
            ("eth0", "eth01", false),
        ] {
            assert_eq!(Glob::new(g).matches(name), want, "{g} ~ {name}");
        }
    }
}
