//! A track a participant publishes to the SFU: its simulcast layers (RIDs ordered low → high)
//! and what is measured of each (bitrate, frame height, last packet, loss), as the
//! [`LayerInfo`]s the forwarding table chooses from (nominal figures until measured).

use std::time::{Duration, Instant};

use str0m::media::{MediaKind, Mid, Rid};

use super::codec::LossWindow;
use crate::forwarding::LayerInfo;

/// A layer with no packet for this long is treated as paused by the publisher.
pub(super) const LAYER_IDLE: Duration = Duration::from_millis(1500);

/// Nominal bitrates and heights of layers not measured yet, low → high (the room client's
/// simulcast encodings).
fn nominal(index: usize, count: usize) -> LayerInfo {
    let from_top = count.saturating_sub(index + 1) as u32;
    LayerInfo {
        height: 720 >> from_top.min(4),
        bitrate_bps: [1_500_000u64, 500_000, 150_000, 100_000][from_top.min(3) as usize],
    }
}

/// Order of simulcast RIDs, low → high: `q`/`h`/`f` (LiveKit's and the room client's names),
/// `l`/`m`/`h`, else the order the offer listed them in.
pub fn order_rids(rids: &[Rid]) -> Vec<Rid> {
    let names: Vec<&str> = rids.iter().map(|r| &**r).collect();
    let scheme: &[&str] = if names.iter().any(|n| *n == "q" || *n == "f") {
        &["q", "h", "f"]
    } else {
        &["l", "m", "h"]
    };
    let mut v = rids.to_vec();
    if names.iter().all(|n| scheme.contains(n)) {
        v.sort_by_key(|r| scheme.iter().position(|s| *s == &**r));
    }
    v
}

#[derive(Debug, Default, Clone)]
pub(super) struct LayerStat {
    pub(super) bytes: u64,
    /// first packet counted in `bytes`
    pub(super) first_in_window: Option<Instant>,
    pub(super) bitrate_bps: u64,
    pub(super) height: Option<u32>,
    pub(super) last_packet: Option<Instant>,
    pub(super) last_keyframe_request: Option<Instant>,
    pub(super) loss: LossWindow,
}

/// A track a participant publishes.
#[derive(Debug)]
pub struct Published {
    /// Audio or video.
    pub kind: MediaKind,
    pub(super) mid: Mid,
    /// Simulcast RIDs low → high (empty: one layer).
    pub(super) rids: Vec<Rid>,
    pub(super) layers: Vec<LayerStat>,
    /// Layers the SFU asked the publisher to pause (nobody receives them): available on
    /// request, though no packet comes.
    pub(super) paused: Vec<bool>,
}

impl Published {
    pub(super) fn layer_of(&self, rid: Option<Rid>) -> usize {
        rid.and_then(|r| self.rids.iter().position(|x| *x == r))
            .unwrap_or(0)
    }

    pub(super) fn infos(&self, now: Instant) -> Vec<LayerInfo> {
        let n = self.layers.len();
        self.layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let active = self.paused.get(i).copied().unwrap_or(false)
                    || l.last_packet
                        .is_some_and(|t| now.saturating_duration_since(t) < LAYER_IDLE);
                let nominal = nominal(i, n);
                LayerInfo {
                    height: l.height.unwrap_or(nominal.height),
                    bitrate_bps: if !active {
                        LayerInfo::UNAVAILABLE
                    } else if l.bitrate_bps > 0 {
                        l.bitrate_bps
                    } else {
                        nominal.bitrate_bps
                    },
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rids_order_low_to_high() {
        let r = |s: &[&str]| s.iter().map(|x| Rid::from(*x)).collect::<Vec<_>>();
        assert_eq!(order_rids(&r(&["f", "q", "h"])), r(&["q", "h", "f"]));
        assert_eq!(order_rids(&r(&["h", "l", "m"])), r(&["l", "m", "h"]));
        assert_eq!(order_rids(&r(&["a", "b"])), r(&["a", "b"]));
    }

    #[test]
    fn unmeasured_layers_get_nominal_figures() {
        assert_eq!(nominal(2, 3).height, 720);
        assert_eq!(nominal(0, 3).height, 180);
        assert_eq!(nominal(0, 1).height, 720);
        assert!(nominal(0, 3).bitrate_bps < nominal(1, 3).bitrate_bps);
    }
}
