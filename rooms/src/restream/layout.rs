//! Where each participant goes in a restreamed room's picture: the active speaker large on top,
//! everyone else in a strip of thumbnails below (the layout of LiveKit's and Zoom's "speaker
//! view"). Pure: participants and the canvas in, rectangles out.

/// A rectangle on the canvas, in pixels (even, for I420).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left.
    pub x: i32,
    /// Top.
    pub y: i32,
    /// Width.
    pub width: i32,
    /// Height.
    pub height: i32,
}

/// Thumbnails the strip holds before they get narrower.
const STRIP_SLOTS: usize = 4;

fn even(v: i64) -> i32 {
    (v.max(0) as i32) & !1
}

/// The speaker view of `participants` (in the order they appeared) on a `width`×`height`
/// canvas. The speaker is `speaker` when it is one of them, else the first; alone, it fills
/// the canvas. Every participant gets exactly one rectangle.
pub fn speaker_view(
    participants: &[String],
    speaker: Option<&str>,
    width: u32,
    height: u32,
) -> Vec<(String, Rect)> {
    let Some(first) = participants.first() else {
        return Vec::new();
    };
    let main = speaker
        .filter(|s| participants.iter().any(|p| p == s))
        .unwrap_or(first);
    let (w, h) = (i64::from(width), i64::from(height));
    if participants.len() == 1 {
        let full = Rect {
            x: 0,
            y: 0,
            width: even(w),
            height: even(h),
        };
        return vec![(main.to_string(), full)];
    }
    let strip_h = h / 4;
    let mut out = vec![(
        main.to_string(),
        Rect {
            x: 0,
            y: 0,
            width: even(w),
            height: even(h - strip_h),
        },
    )];
    let others: Vec<&String> = participants.iter().filter(|p| *p != main).collect();
    let slots = others.len().max(STRIP_SLOTS) as i64;
    let cell_w = w / slots;
    // centre the strip when it is not full
    let left = (w - cell_w * others.len() as i64) / 2;
    for (i, p) in others.into_iter().enumerate() {
        out.push((
            p.clone(),
            Rect {
                x: even(left + cell_w * i as i64),
                y: even(h - strip_h),
                width: even(cell_w),
                height: even(strip_h),
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("p{i}")).collect()
    }

    fn overlaps(a: &Rect, b: &Rect) -> bool {
        a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height
    }

    #[test]
    fn nobody_gives_an_empty_picture_and_one_fills_it() {
        assert!(speaker_view(&[], None, 1280, 720).is_empty());
        let one = speaker_view(&names(1), Some("someone-else"), 1280, 720);
        assert_eq!(
            one,
            vec![(
                "p0".to_string(),
                Rect {
                    x: 0,
                    y: 0,
                    width: 1280,
                    height: 720
                }
            )]
        );
    }

    #[test]
    fn the_speaker_is_large_and_the_others_in_a_centred_strip() {
        let tiles = speaker_view(&names(3), Some("p1"), 1280, 720);
        assert_eq!(tiles.len(), 3);
        assert_eq!(tiles[0].0, "p1");
        assert_eq!(
            tiles[0].1,
            Rect {
                x: 0,
                y: 0,
                width: 1280,
                height: 540
            }
        );
        // two thumbnails of a four-slot strip, centred
        assert_eq!(tiles[1].0, "p0");
        assert_eq!(
            tiles[1].1,
            Rect {
                x: 320,
                y: 540,
                width: 320,
                height: 180
            }
        );
        assert_eq!(tiles[2].0, "p2");
        assert_eq!(tiles[2].1.x, 640);
    }

    #[test]
    fn an_unknown_speaker_falls_back_to_the_first() {
        let tiles = speaker_view(&names(2), None, 1280, 720);
        assert_eq!(tiles[0].0, "p0");
        let tiles = speaker_view(&names(2), Some("gone"), 1280, 720);
        assert_eq!(tiles[0].0, "p0");
    }

    #[test]
    fn many_participants_share_the_strip_without_overlapping() {
        for n in 1..=17 {
            for (w, h) in [(1280, 720), (854, 480), (641, 359)] {
                let tiles = speaker_view(&names(n), Some("p3"), w, h);
                assert_eq!(tiles.len(), n);
                for (i, (_, a)) in tiles.iter().enumerate() {
                    assert!(a.width > 0 && a.height > 0, "{n} {a:?}");
                    assert!(a.x % 2 == 0 && a.y % 2 == 0 && a.width % 2 == 0);
                    assert!(a.x + a.width <= w as i32 && a.y + a.height <= h as i32);
                    for (_, b) in tiles.iter().skip(i + 1) {
                        assert!(!overlaps(a, b), "{n}: {a:?} {b:?}");
                    }
                }
            }
        }
    }
}
