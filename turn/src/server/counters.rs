//! The TURN server's metric series, made once at start.

use tidecast_common::metrics::{Metric, Registry};

use crate::core::Refused;

/// The series the loop updates (`tidecast_turn_*`).
pub(super) struct Counters {
    pub(super) allocations: Metric,
    pub(super) created: Metric,
    pub(super) to_peer_bytes: Metric,
    pub(super) to_peer_packets: Metric,
    pub(super) to_client_bytes: Metric,
    pub(super) to_client_packets: Metric,
    auth_failures: Metric,
    dropped: Vec<(&'static str, Metric)>,
    refused: Vec<(Refused, Metric)>,
}

/// Labels of `tidecast_turn_dropped_total`: the core's [`crate::core::Dropped`] reasons, then
/// the shell's own (`no_relay_socket`: no socket for the relayed address; `socket`: the kernel
/// refused the datagram, a socket buffer or a TCP client's queue was full).
pub(super) const DROP_REASONS: [&str; 7] = [
    "no_allocation",
    "no_channel",
    "no_permission",
    "bandwidth",
    "malformed",
    "no_relay_socket",
    "socket",
];

impl Counters {
    pub(super) fn new(r: &Registry) -> Counters {
        let relayed_bytes = |dir| {
            r.counter(
                "tidecast_turn_relayed_bytes_total",
                "Bytes relayed, by direction (to_peer, to_client).",
                &[("direction", dir)],
            )
        };
        let relayed_packets = |dir| {
            r.counter(
                "tidecast_turn_relayed_packets_total",
                "Datagrams relayed, by direction (to_peer, to_client).",
                &[("direction", dir)],
            )
        };
        Counters {
            allocations: r.gauge("tidecast_turn_allocations", "TURN allocations now.", &[]),
            created: r.counter(
                "tidecast_turn_allocations_total",
                "TURN allocations made.",
                &[],
            ),
            to_peer_bytes: relayed_bytes("to_peer"),
            to_peer_packets: relayed_packets("to_peer"),
            to_client_bytes: relayed_bytes("to_client"),
            to_client_packets: relayed_packets("to_client"),
            auth_failures: r.counter(
                "tidecast_turn_auth_failures_total",
                "TURN requests with wrong, expired or stale credentials.",
                &[],
            ),
            dropped: DROP_REASONS
                .iter()
                .map(|&reason| {
                    let m = r.counter(
                        "tidecast_turn_dropped_total",
                        "Datagrams from clients or peers that were not relayed, by reason.",
                        &[("reason", reason)],
                    );
                    (reason, m)
                })
                .collect(),
            refused: Refused::ALL
                .iter()
                .map(|&why| {
                    let m = r.counter(
                        "tidecast_turn_refused_total",
                        "TURN requests refused, by reason.",
                        &[("reason", why.label())],
                    );
                    (why, m)
                })
                .collect(),
        }
    }

    /// Relayed data dropped: `reason` one of [`DROP_REASONS`]. The series are made at start, so
    /// a flood of data that is dropped costs no registry lookup per datagram.
    pub(super) fn dropped(&self, reason: &'static str, n: usize) {
        if let Some((_, m)) = self.dropped.iter().find(|(r, _)| *r == reason) {
            m.add(n as i64);
        }
    }

    /// A request refused; like [`Counters::dropped`], no registry lookup per refusal (a flood
    /// of bad requests is what this counts).
    pub(super) fn refused(&self, why: Refused) {
        if let Some((_, m)) = self.refused.iter().find(|(r, _)| *r == why) {
            m.inc();
        }
        if matches!(why, Refused::Unauthorized | Refused::StaleNonce) {
            self.auth_failures.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DROP_REASONS;
    use crate::core::Dropped;

    #[test]
    fn every_drop_the_core_reports_has_a_series() {
        for d in [
            Dropped::NoAllocation,
            Dropped::NoChannel,
            Dropped::NoPermission,
            Dropped::Bandwidth,
            Dropped::Malformed,
        ] {
            assert!(DROP_REASONS.contains(&d.label()), "{d:?}");
        }
    }
}
