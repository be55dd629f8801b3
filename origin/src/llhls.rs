//! LL-HLS request semantics (RFC 8216bis 6.2.5): `_HLS_msn` / `_HLS_part` / `_HLS_skip` query
//! parameters and when a blocking playlist request may be answered. Pure.

use crate::window::RenditionTrack;

/// The delivery directives of a playlist request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HlsQuery {
    /// `_HLS_msn`
    pub msn: Option<u64>,
    /// `_HLS_part`
    pub part: Option<usize>,
    /// `_HLS_skip=YES` (or `v2`)
    pub skip: bool,
}

/// A malformed request (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// `_HLS_part` without `_HLS_msn`.
    #[error("_HLS_part requires _HLS_msn")]
    PartWithoutMsn,
    /// A value that is not a number / YES.
    #[error("malformed _HLS_ parameter")]
    Malformed,
    /// `_HLS_msn` more than two segments past the live edge.
    #[error("_HLS_msn is too far ahead of the live edge")]
    TooFarAhead,
}

/// Parse the query string. Other parameters are ignored.
pub fn parse_query(query: Option<&str>) -> Result<HlsQuery, QueryError> {
    let mut q = HlsQuery::default();
    for kv in query.unwrap_or("").split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "_HLS_msn" => q.msn = Some(v.parse().map_err(|_| QueryError::Malformed)?),
            "_HLS_part" => q.part = Some(v.parse().map_err(|_| QueryError::Malformed)?),
            "_HLS_skip" => match v {
                "YES" | "v2" => q.skip = true,
                "NO" => {}
                _ => return Err(QueryError::Malformed),
            },
            _ => {}
        }
    }
    if q.part.is_some() && q.msn.is_none() {
        return Err(QueryError::PartWithoutMsn);
    }
    Ok(q)
}

/// Whether a blocking request can be answered now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Answer now.
    Ready,
    /// Hold the request until the packager changes (or the deadline passes: 503).
    Wait,
}

/// Decide for `track`; `live` is false once the playlist has ENDLIST (directives are ignored).
pub fn readiness(
    track: &RenditionTrack,
    live: bool,
    q: &HlsQuery,
) -> Result<Readiness, QueryError> {
    let Some(msn) = q.msn else {
        return Ok(Readiness::Ready);
    };
    if !live {
        return Ok(Readiness::Ready);
    }
    let last = track
        .last_complete_msn()
        .unwrap_or(track.next_msn.saturating_sub(1));
    if msn > last + 2 {
        return Err(QueryError::TooFarAhead);
    }
    let done = match q.part {
        Some(part) => track.has_part(msn, part),
        None => track.has_segment(msn),
    };
    Ok(if done {
        Readiness::Ready
    } else {
        Readiness::Wait
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use tidecast_common::{CmafChunk, RenditionInfo, TrackKind};

    use super::*;

    fn track_with(parts: &[usize]) -> RenditionTrack {
        let mut t = RenditionTrack::new(
            RenditionInfo {
                name: "a".into(),
                kind: TrackKind::Video,
                bitrate_bps: 1,
                width: 2,
                height: 2,
            },
            0,
            0,
        );
        t.inits.insert(0, Bytes::from_static(b"i"));
        for &n in parts {
            for k in 0..n {
                t.push_chunk(
                    CmafChunk {
                        data: Bytes::from_static(b"p"),
                        pts: Duration::ZERO,
                        duration: Duration::from_millis(500),
                        program_date_time: SystemTime::UNIX_EPOCH,
                        samples: 1,
                        starts_segment: k == 0,
                    },
                    10,
                )
                .unwrap();
            }
        }
        t
    }

    #[test]
    fn parses_directives() {
        assert_eq!(parse_query(None), Ok(HlsQuery::default()));
        assert_eq!(
            parse_query(Some("_HLS_msn=5&_HLS_part=2&_HLS_skip=YES&token=x")),
            Ok(HlsQuery {
                msn: Some(5),
                part: Some(2),
                skip: true
            })
        );
        assert_eq!(
            parse_query(Some("_HLS_part=2")),
            Err(QueryError::PartWithoutMsn)
        );
        assert_eq!(parse_query(Some("_HLS_msn=x")), Err(QueryError::Malformed));
    }

    #[test]
    fn blocking_rules() {
        // segments 0 and 1 complete (4 parts), segment 2 open with 1 part
        let t = track_with(&[4, 4, 1]);
        let q = |msn, part| HlsQuery {
            msn: Some(msn),
            part,
            skip: false,
        };
        assert_eq!(readiness(&t, true, &q(2, Some(0))), Ok(Readiness::Ready));
        assert_eq!(readiness(&t, true, &q(2, Some(1))), Ok(Readiness::Wait));
        assert_eq!(readiness(&t, true, &q(2, None)), Ok(Readiness::Wait));
        assert_eq!(readiness(&t, true, &q(1, None)), Ok(Readiness::Ready));
        // part index past the end of complete segment 1 = segment 2 part 0, which exists
        assert_eq!(readiness(&t, true, &q(1, Some(7))), Ok(Readiness::Ready));
        assert_eq!(readiness(&t, true, &q(3, Some(0))), Ok(Readiness::Wait));
        assert_eq!(
            readiness(&t, true, &q(4, None)),
            Err(QueryError::TooFarAhead)
        );
        // ENDLIST: directives ignored
        assert_eq!(readiness(&t, false, &q(3, Some(0))), Ok(Readiness::Ready));
    }
}
