//! Rooms across nodes (`rooms.nodes`): a room lives on one node. Its owner is the node its name
//! hashes to (rendezvous, [`NodePool`] — as the edge picks an origin for a stream) among the
//! nodes this one sees healthy (`/readyz` probed every second), unless the room is already open
//! somewhere: a room stays where it is while it lasts, so a node coming back does not split the
//! rooms that moved away while it was down. A join that reaches another node is told to go to
//! the owner (`redirect`); a dead node's rooms move to the next node in their order as their
//! participants join again.
//!
//! [`place`] is the decision, pure; [`RoomCluster`] asks the other nodes and keeps their health.

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
    secret: String,
    pool: Mutex<NodePool>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl RoomCluster {
    /// From `rooms.nodes` and `rooms.node_url`; `None` for a single node.
    pub fn new(config: &RoomsConfig) -> Option<Arc<RoomCluster>> {
        if config.nodes.is_empty() {
            return None;
        }
        let nodes: Vec<String> = config
            .nodes
            .iter()
            .map(|n| n.trim().trim_end_matches('/').to_string())
            .collect();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        connector.set_nodelay(true);
        Some(Arc::new(RoomCluster {
            me: config.node_url.trim().trim_end_matches('/').to_string(),
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

    /// Probe every other node's `/readyz` every second, forever (a draining node is not ready:
    /// its rooms move as their participants join again).
    pub async fn probe_forever(self: Arc<Self>, registry: Registry) {
        loop {
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
    fn websocket_urls_of_nodes() {
        assert_eq!(ws_url("http://a:7880/", "r"), "ws://a:7880/rooms/r/ws");
        assert_eq!(
            ws_url("https://a.example", "r"),
            "wss://a.example/rooms/r/ws"
        );
    }
}
