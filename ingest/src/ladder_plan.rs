//! Which rungs a source gets: never upscale, drop rungs above the source height, keep the
//! source aspect ratio, even dimensions.

use tidecast_common::config::RungConfig;

/// One rung the ladder will encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRung {
    /// Rendition name (`720p`).
    pub name: String,
    /// Output width (even).
    pub width: u32,
    /// Output height (even).
    pub height: u32,
    /// x264 bitrate in kbit/s.
    pub video_kbps: u32,
}

/// Plan the ladder for a `source_width`×`source_height` source, highest rung first.
///
/// Rungs taller than the source are dropped. If every configured rung is taller, one rung at the
/// source size is kept (with the smallest rung's bitrate), so a tiny source still plays.
pub fn plan(source_width: u32, source_height: u32, rungs: &[RungConfig]) -> Vec<PlannedRung> {
    let mut sorted: Vec<&RungConfig> = rungs.iter().collect();
    sorted.sort_by_key(|r| std::cmp::Reverse(r.height));
    let mut out: Vec<PlannedRung> = Vec::new();
    for rung in &sorted {
        if rung.height > source_height || rung.height == 0 {
            continue;
        }
        if out.iter().any(|r| r.height == even(rung.height)) {
            continue;
        }
        out.push(PlannedRung {
            name: rung.name.clone(),
            width: scaled_width(source_width, source_height, rung.height),
            height: even(rung.height),
            video_kbps: rung.video_kbps,
        });
    }
    if out.is_empty() {
        if let Some(smallest) = sorted.last() {
            let height = even(source_height).max(2);
            out.push(PlannedRung {
                name: format!("{height}p"),
                width: even(source_width).max(2),
                height,
                video_kbps: smallest.video_kbps,
            });
        }
    }
    out
}

/// Whether to add a passthrough rendition for a source whose observed keyframe interval is
/// `gop_ms`: only when enabled and the GOP is short enough to cut segments of about the target
/// length (at most 1.5× the target). An OBS "auto" keyframe interval (~8 s) must not dictate
/// 8 s segments, so such a source is fully transcoded with keyframes where the ladder wants them.
pub fn use_passthrough(enabled: bool, gop_ms: Option<u32>, segment_ms: u64) -> bool {
    match gop_ms {
        Some(gop) if enabled && gop > 0 => u64::from(gop) * 2 <= segment_ms * 3,
        _ => false,
    }
}

/// With passthrough the source takes the place of every rung at or above its height.
pub fn below_source(rungs: Vec<PlannedRung>, source_height: u32) -> Vec<PlannedRung> {
    rungs
        .into_iter()
        .filter(|r| r.height < source_height)
        .collect()
}

fn even(v: u32) -> u32 {
    v & !1
}

fn scaled_width(source_width: u32, source_height: u32, height: u32) -> u32 {
    if source_height == 0 {
        return even(height * 16 / 9);
    }
    let exact = u64::from(source_width) * u64::from(height) * 2 / u64::from(source_height);
    // round to the nearest even number
    let w = (exact + 2) / 4 * 2;
    (w as u32).max(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidecast_common::config::LadderConfig;

    fn names(p: &[PlannedRung]) -> Vec<(String, u32, u32)> {
        p.iter()
            .map(|r| (r.name.clone(), r.width, r.height))
            .collect()
    }

    #[test]
    fn drops_rungs_above_720p_source() {
        let p = plan(1280, 720, &LadderConfig::default().rungs);
        assert_eq!(
            names(&p),
            vec![
                ("720p".into(), 1280, 720),
                ("480p".into(), 854, 480),
                ("360p".into(), 640, 360),
                ("240p".into(), 426, 240),
            ]
        );
    }

    #[test]
    fn keeps_one_rung_for_tiny_source() {
        let p = plan(320, 180, &LadderConfig::default().rungs);
        assert_eq!(names(&p), vec![("180p".into(), 320, 180)]);
        assert_eq!(p[0].video_kbps, 400);
    }

    #[test]
    fn passthrough_only_for_short_gops() {
        assert!(use_passthrough(true, Some(2000), 2000));
        assert!(use_passthrough(true, Some(3000), 2000));
        assert!(!use_passthrough(true, Some(8333), 2000));
        assert!(!use_passthrough(true, None, 2000));
        assert!(!use_passthrough(false, Some(2000), 2000));
        let p = below_source(plan(1280, 720, &LadderConfig::default().rungs), 720);
        assert_eq!(p[0].height, 480);
    }

    #[test]
    fn portrait_and_odd_sizes_stay_even() {
        let p = plan(721, 1281, &LadderConfig::default().rungs);
        assert!(p.iter().all(|r| r.width % 2 == 0 && r.height % 2 == 0));
        assert_eq!(p[0].height, 1080);
        assert_eq!(p[0].width, 608);
    }
}
