//! Rooms across nodes (`rooms.nodes`): a room lives on one node. Its owner is the node its name
//! hashes to (rendezvous, [`NodePool`] — as the edge picks an origin for a stream) among the
//! nodes this one sees healthy (`/readyz` probed every second), unless the room is already open
//! somewhere: a room stays where it is while it lasts, so a node coming back does not split the
//! rooms that moved away while it was down. A join that reaches another node is told to go to
//! the owner (`redirect`); a dead node's rooms move to the next node in their order as their
//! participants join again.
//!
//! The members are `rooms.nodes`, and with `rooms.nodes_dns` whatever its names resolve to,
//! looked up again every [`DISCOVERY_INTERVAL`] ([`members`]): on Kubernetes a headless Service
//! over the rooms DaemonSet answers with the address of every ready node, so a node added or
//! removed with the cluster joins or leaves the rendezvous by itself.
//!
//! [`place`] and [`members`] are the decisions, pure; [`RoomCluster`] asks the other nodes,
//! keeps their health and resolves the names.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tidecast_common::config::RoomsConfig;
use tidecast_common::metrics::Registry;
use tidecast_common::rendezvous::NodePool;
use tracing::{info, warn};

/// Redirects a join follows before a node takes the room whatever it thinks (nodes whose views
/// of each other's health differ must not send a client back and forth).
pub const MAX_REDIRECTS: u32 = 2;

/// Where a join for a room goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// This node serves it.
    Here,
    /// That node (a base URL of `rooms.nodes`).
    There(String),
}

/// The decision for a join at node `me`: the room is open here (`hosted_here`) or on
/// `hosted_elsewhere`; else it goes to `owner`, its first healthy node by rendezvous hashing.
/// `redirects` is how many times this join was redirected already.
pub fn place(
    me: &str,
    hosted_here: bool,
    hosted_elsewhere: Option<&str>,
    owner: Option<&str>,
    redirects: u32,
) -> Placement {
    if hosted_here || redirects >= MAX_REDIRECTS {
        return Placement::Here;
    }
    match hosted_elsewhere.or(owner) {
        Some(node) if node != me => Placement::There(node.to_string()),
        _ => Placement::Here,
    }
}

/// How often `rooms.nodes_dns` is resolved again.
pub const DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);

/// The members of the cluster after a discovery round: the listed `nodes`, this node (`me`),
/// and `scheme://ADDRESS:PORT` for each `resolved` address of the IP family of `me`'s own
/// address (a dual-stack name answers each node twice; a node is one member) — `me`'s scheme.
/// Sorted, without repeats.
pub fn members(me: &str, nodes: &[String], resolved: &[SocketAddr]) -> Vec<String> {
    let (scheme, authority) = me.split_once("://").unwrap_or(("http", me));
    let my_family = authority
        .split('/')
        .next()
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .map(|a| a.is_ipv4());
    let mut all: Vec<String> = nodes
        .iter()
        .map(|n| n.trim().trim_end_matches('/').to_string())
        .chain(std::iter::once(me.trim_end_matches('/').to_string()))
        .chain(
            resolved
                .iter()
                .filter(|a| my_family.is_none_or(|v4| a.is_ipv4() == v4))
                .map(|a| format!("{scheme}://{a}")),
        )
        .collect();
    all.sort();
    all.dedup();
    all
}

/// The WebSocket URL of a room on a node (`http://h:p` → `ws://h:p/rooms/{room}/ws`).
pub fn ws_url(node: &str, room: &str) -> String {
    let base = node.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    };
    format!("{base}/rooms/{room}/ws")
}

/// This node's view of the rooms nodes.
pub struct RoomCluster {
    me: String,
    /// `rooms.nodes`
    listed: Vec<String>,
    /// `rooms.nodes_dns`
    names: Vec<String>,
    secret: String,
    pool: Mutex<NodePool>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl RoomCluster {
    /// From `rooms.nodes`, `rooms.nodes_dns` and `rooms.node_url`; `None` for a single node.
    pub fn new(config: &RoomsConfig) -> Option<Arc<RoomCluster>> {
        if config.nodes.is_empty() && config.nodes_dns.is_empty() {
            return None;
        }
        let me = config.node_url.trim().trim_end_matches('/').to_string();
        let listed: Vec<String> = config
            .nodes
            .iter()
            .map(|n| n.trim().trim_end_matches('/').to_string())
            .collect();
        let names: Vec<String> = config
            .nodes_dns
            .iter()
            .map(|n| n.trim().to_string())
            .collect();
        // until the names are resolved: the listed nodes, and this one when found by name
        let nodes = if names.is_empty() {
            listed.clone()
        } else {
            members(&me, &listed, &[])
        };
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        connector.set_nodelay(true);
        Some(Arc::new(RoomCluster {
            me,
            listed,
            names,
            secret: config.api_secret.clone(),
            pool: Mutex::new(NodePool::new(&nodes)),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }))
    }

    fn pool(&self) -> MutexGuard<'_, NodePool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where a join for `room` goes. Only the room's owner asks the other healthy nodes
    /// whether the room is open there (it moved while the owner was away).
    pub async fn placement(&self, room: &str, hosted_here: bool, redirects: u32) -> Placement {
        if hosted_here || redirects >= MAX_REDIRECTS {
            return Placement::Here;
        }
        let (owner, others) = {
            let pool = self.pool();
            let order = pool.order(room);
            let others: Vec<String> = order
                .iter()
                .filter(|n| **n != self.me && pool.is_healthy(n))
                .cloned()
                .collect();
            (order.into_iter().next(), others)
        };
        let elsewhere = if owner.as_deref() == Some(self.me.as_str()) {
            let asks = others.iter().map(|n| self.hosts(n, room));
            let answers = futures_util::future::join_all(asks).await;
            others
                .iter()
                .zip(answers)
                .find(|(_, hosts)| *hosts)
                .map(|(n, _)| n.clone())
        } else {
            None
        };
        place(
            &self.me,
            hosted_here,
            elsewhere.as_deref(),
            owner.as_deref(),
            redirects,
        )
    }

    /// Whether `room` is open on `node` (its `GET /api/rooms/{room}` answers 200).
    async fn hosts(&self, node: &str, room: &str) -> bool {
        let Ok(uri) = format!("{node}/api/rooms/{room}").parse::<Uri>() else {
            return false;
        };
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = uri;
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", self.secret)) {
            req.headers_mut().insert(AUTHORIZATION, v);
        }
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.client.request(req)).await,
            Ok(Ok(r)) if r.status().is_success()
        )
    }

    async fn ready(&self, node: &str) -> bool {
        let Ok(uri) = format!("{node}/readyz").parse::<Uri>() else {
            return false;
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.client.get(uri)).await,
            Ok(Ok(r)) if r.status().is_success()
        )
    }

    /// Resolve `rooms.nodes_dns` and make what it finds the members; a name that does not
    /// resolve (or not in time) leaves them as they were.
    async fn discover(&self, registry: &Registry) {
        let mut resolved = Vec::new();
        for name in &self.names {
            match tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host(name)).await
            {
                Ok(Ok(addrs)) => resolved.extend(addrs),
                Ok(Err(e)) => {
                    warn!(%name, "rooms.nodes_dns: {e}; the rooms nodes stay as they were");
                    return;
                }
                Err(_) => {
                    warn!(%name, "rooms.nodes_dns: no answer in 2 s; the rooms nodes stay as they were");
                    return;
                }
            }
        }
        let found = members(&self.me, &self.listed, &resolved);
        let (changed, gone) = {
            let mut pool = self.pool();
            let before: Vec<String> = pool.bases().map(str::to_string).collect();
            let changed = pool.set_bases(&found);
            let gone: Vec<String> = before.into_iter().filter(|b| !found.contains(b)).collect();
            (changed, gone)
        };
        if changed {
            info!(nodes = ?found, "rooms nodes changed (rooms.nodes_dns)");
            for node in gone {
                registry.remove_labelled_in("tidecast_rooms_node_healthy", "node", &node);
            }
        }
    }

    /// Probe every other node's `/readyz` every second, forever (a draining node is not ready:
    /// its rooms move as their participants join again); with `rooms.nodes_dns`, find the
    /// members again every [`DISCOVERY_INTERVAL`].
    pub async fn probe_forever(self: Arc<Self>, registry: Registry) {
        let mut discovered: Option<Instant> = None;
        loop {
            if !self.names.is_empty()
                && discovered.is_none_or(|t| t.elapsed() >= DISCOVERY_INTERVAL)
            {
                self.discover(&registry).await;
                discovered = Some(Instant::now());
            }
            registry
                .gauge(
                    "tidecast_rooms_nodes",
                    "Rooms nodes this one knows of, itself included.",
                    &[],
                )
                .set(self.pool().bases().count() as i64);
            let nodes: Vec<String> = self.pool().bases().map(str::to_string).collect();
            for node in nodes.iter().filter(|n| **n != self.me) {
                let ok = self.ready(node).await;
                let flipped = self.pool().record(node, ok, Instant::now());
                match flipped {
                    Some(true) => info!(%node, "rooms node up"),
                    Some(false) => warn!(%node, "rooms node down: its rooms move on rejoin"),
                    None => {}
                }
                registry
                    .gauge(
                        "tidecast_rooms_node_healthy",
                        "1 while this rooms node sees the other node ready.",
                        &[("node", node)],
                    )
                    .set(i64::from(self.pool().is_healthy(node)));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_goes_where_it_is_open_else_to_its_owner() {
        let (a, b) = ("http://a:7880", "http://b:7880");
        assert_eq!(
            place(a, true, None, Some(b), 0),
            Placement::Here,
            "open here"
        );
        assert_eq!(
            place(a, false, None, Some(b), 0),
            Placement::There(b.into())
        );
        assert_eq!(
            place(a, false, None, Some(a), 0),
            Placement::Here,
            "the owner"
        );
        assert_eq!(
            place(a, false, Some(b), Some(a), 0),
            Placement::There(b.into()),
            "open on another node: it stays there"
        );
        assert_eq!(
            place(a, false, None, Some(b), MAX_REDIRECTS),
            Placement::Here,
            "no ping-pong between nodes that disagree"
        );
        assert_eq!(place(a, false, None, None, 0), Placement::Here);
    }

    #[test]
    fn a_dead_owner_hands_its_rooms_to_the_next_node() {
        let nodes: Vec<String> = ["http://a:7880", "http://b:7880", "http://c:7880"]
            .map(String::from)
            .to_vec();
        let mut pool = NodePool::new(&nodes);
        let room = (0..100)
            .map(|i| format!("r{i}"))
            .find(|r| pool.order(r)[0] == "http://b:7880")
            .expect("a room owned by b");
        let next = pool.order(&room)[1].clone();
        let now = Instant::now();
        pool.record("http://b:7880", false, now);
        pool.record("http://b:7880", false, now);
        assert_eq!(
            pool.order(&room)[0],
            next,
            "b is down: the next node in the room's order"
        );
    }

    #[test]
    fn members_found_by_name_are_this_nodes_family_with_the_listed_ones() {
        let addrs: Vec<SocketAddr> = ["10.0.0.8:7880", "[fd00::8]:7880", "10.0.0.7:7880"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(
            members("http://10.0.0.7:7880/", &[], &addrs),
            ["http://10.0.0.7:7880", "http://10.0.0.8:7880"],
            "IPv4 like this node: each node once"
        );
        assert_eq!(
            members("https://[fd00::7]:7880", &[], &addrs),
            ["https://[fd00::7]:7880", "https://[fd00::8]:7880"],
            "IPv6 and this node's scheme"
        );
        assert_eq!(
            members(
                "http://10.0.0.7:7880",
                &["http://rooms-x:7880/".into()],
                &[]
            ),
            ["http://10.0.0.7:7880", "http://rooms-x:7880"],
            "nothing resolved yet: the listed nodes and this one"
        );
        assert_eq!(
            members("http://rooms-a:7880", &[], &addrs[..2]).len(),
            3,
            "this node by name: every address found"
        );
    }

    #[test]
    fn websocket_urls_of_nodes() {
        assert_eq!(ws_url("http://a:7880/", "r"), "ws://a:7880/rooms/r/ws");
        assert_eq!(
            ws_url("https://a.example", "r"),
            "wss://a.example/rooms/r/ws"
        );
    }
}
