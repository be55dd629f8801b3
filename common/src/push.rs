//! The CMAF push protocol between a ladder (`tidecast ingest`) and a remote origin: live events
//! as HTTP requests, so ingest and origin can run on different machines. Pure: builds and parses
//! request lines; the shells do the I/O.
//!
//! | event | request |
//! |---|---|
//! | session started | `POST /ingest/{stream}/sessions/{session}` JSON `{started_at_ms, renditions:[…]}` |
//! | init segment | `PUT /ingest/{stream}/sessions/{session}/{rendition}/init.mp4` |
//! | media chunk | `PUT /ingest/{stream}/sessions/{session}/{rendition}/chunk?pts_us=…&duration_us=…&pdt_ms=…&samples=…&starts_segment=0/1` |
//! | session ended | `DELETE /ingest/{stream}/sessions/{session}` |
//!
//! Every request carries `Authorization: Bearer {token}`.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::keys::is_valid_stream_name;
use crate::live::unix_millis;
use crate::{CmafChunk, LiveEvent, RenditionInfo, TrackKind};

/// HTTP method of a push request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushMethod {
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
}

impl PushMethod {
    /// Method name.
    pub fn as_str(self) -> &'static str {
        match self {
            PushMethod::Post => "POST",
            PushMethod::Put => "PUT",
            PushMethod::Delete => "DELETE",
        }
    }
}

/// One push request: method, path with query, body.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// Method.
    pub method: PushMethod,
    /// Path and query.
    pub path: String,
    /// Body.
    pub body: Bytes,
}

#[derive(Debug, Serialize, Deserialize)]
struct RenditionJson {
    name: String,
    kind: String,
    bitrate_bps: u64,
    width: u32,
    height: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct SessionJson {
    started_at_ms: u64,
    renditions: Vec<RenditionJson>,
}

/// Why a push request was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("push request: {0}")]
pub struct PushError(pub String);

/// Encode an event as a request.
pub fn encode(event: &LiveEvent) -> Option<PushRequest> {
    Some(match event {
        LiveEvent::SessionStarted {
            stream,
            session,
            renditions,
            started_at,
        } => {
            let body = SessionJson {
                started_at_ms: unix_millis(*started_at),
                renditions: renditions
                    .iter()
                    .map(|r| RenditionJson {
                        name: r.name.clone(),
                        kind: r.kind.as_str().to_string(),
                        bitrate_bps: r.bitrate_bps,
                        width: r.width,
                        height: r.height,
                    })
                    .collect(),
            };
            PushRequest {
                method: PushMethod::Post,
                path: format!("/ingest/{stream}/sessions/{session}"),
                body: Bytes::from(serde_json::to_vec(&body).ok()?),
            }
        }
        LiveEvent::Init {
            stream,
            session,
            rendition,
            data,
        } => PushRequest {
            method: PushMethod::Put,
            path: format!("/ingest/{stream}/sessions/{session}/{rendition}/init.mp4"),
            body: data.clone(),
        },
        LiveEvent::Chunk {
            stream,
            session,
            rendition,
            chunk,
        } => PushRequest {
            method: PushMethod::Put,
            path: format!(
                "/ingest/{stream}/sessions/{session}/{rendition}/chunk?pts_us={}&duration_us={}&pdt_ms={}&samples={}&starts_segment={}",
                chunk.pts.as_micros(),
                chunk.duration.as_micros(),
                unix_millis(chunk.program_date_time),
                chunk.samples,
                u8::from(chunk.starts_segment),
            ),
            body: chunk.data.clone(),
        },
        LiveEvent::SessionEnded { stream, session } => PushRequest {
            method: PushMethod::Delete,
            path: format!("/ingest/{stream}/sessions/{session}"),
            body: Bytes::new(),
        },
    })
}

fn query_u64(query: &str, key: &str) -> Result<u64, PushError> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| PushError(format!("missing or bad query parameter {key}")))
}

fn name(s: &str) -> Result<String, PushError> {
    if is_valid_stream_name(s) {
        Ok(s.to_string())
    } else {
        Err(PushError(format!("bad name {s:?}")))
    }
}

/// The body in an allocation of its own: a request body can be a slice of the connection's read
/// buffer, which the origin's window (holding the chunk for a minute) would otherwise pin whole.
fn owned(body: Bytes) -> Bytes {
    Bytes::copy_from_slice(&body)
}

/// Decode a request (path without the `/ingest/` prefix handled here) into an event.
pub fn decode(
    method: &str,
    path: &str,
    query: Option<&str>,
    body: Bytes,
) -> Result<LiveEvent, PushError> {
    let rest = path
        .strip_prefix("/ingest/")
        .ok_or_else(|| PushError("not an ingest path".into()))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let session = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| PushError("bad session id".into()))
    };
    match (method, parts.as_slice()) {
        ("POST", [stream, "sessions", id]) => {
            let json: SessionJson = serde_json::from_slice(&body)
                .map_err(|e| PushError(format!("session body: {e}")))?;
            let mut renditions = Vec::new();
            for r in json.renditions {
                renditions.push(RenditionInfo {
                    name: name(&r.name)?,
                    kind: match r.kind.as_str() {
                        "video" => TrackKind::Video,
                        "audio" => TrackKind::Audio,
                        other => return Err(PushError(format!("bad kind {other}"))),
                    },
                    bitrate_bps: r.bitrate_bps,
                    width: r.width,
                    height: r.height,
                });
            }
            Ok(LiveEvent::SessionStarted {
                stream: name(stream)?,
                session: session(id)?,
                renditions,
                started_at: SystemTime::UNIX_EPOCH + Duration::from_millis(json.started_at_ms),
            })
        }
        ("PUT", [stream, "sessions", id, rendition, "init.mp4"]) => Ok(LiveEvent::Init {
            stream: name(stream)?,
            session: session(id)?,
            rendition: name(rendition)?,
            data: owned(body),
        }),
        ("PUT", [stream, "sessions", id, rendition, "chunk"]) => {
            let q = query.unwrap_or("");
            Ok(LiveEvent::Chunk {
                stream: name(stream)?,
                session: session(id)?,
                rendition: name(rendition)?,
                chunk: CmafChunk {
                    starts_segment: query_u64(q, "starts_segment")? == 1,
                    data: owned(body),
                    pts: Duration::from_micros(query_u64(q, "pts_us")?),
                    duration: Duration::from_micros(query_u64(q, "duration_us")?),
                    program_date_time: SystemTime::UNIX_EPOCH
                        + Duration::from_millis(query_u64(q, "pdt_ms")?),
                    samples: u32::try_from(query_u64(q, "samples")?)
                        .map_err(|_| PushError("samples out of range".into()))?,
                },
            })
        }
        ("DELETE", [stream, "sessions", id]) => Ok(LiveEvent::SessionEnded {
            stream: name(stream)?,
            session: session(id)?,
        }),
        _ => Err(PushError(format!("unknown push request {method} {path}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(e: LiveEvent) -> LiveEvent {
        let r = encode(&e).unwrap();
        let (path, query) = match r.path.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (r.path.clone(), None),
        };
        decode(r.method.as_str(), &path, query.as_deref(), r.body).unwrap()
    }

    #[test]
    fn events_roundtrip() {
        let started = LiveEvent::SessionStarted {
            stream: "s".into(),
            session: 7,
            renditions: vec![RenditionInfo {
                name: "720p".into(),
                kind: TrackKind::Video,
                bitrate_bps: 5,
                width: 1280,
                height: 720,
            }],
            started_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1234),
        };
        assert!(
            matches!(roundtrip(started), LiveEvent::SessionStarted { session: 7, ref renditions, .. } if renditions[0].height == 720)
        );
        let seg = LiveEvent::Chunk {
            stream: "s".into(),
            session: 7,
            rendition: "720p".into(),
            chunk: CmafChunk {
                starts_segment: true,
                data: Bytes::from_static(b"moof"),
                pts: Duration::from_micros(2_000_001),
                duration: Duration::from_micros(2_033_000),
                program_date_time: SystemTime::UNIX_EPOCH + Duration::from_millis(99),
                samples: 61,
            },
        };
        match roundtrip(seg) {
            LiveEvent::Chunk { chunk, .. } => {
                assert_eq!(chunk.duration, Duration::from_micros(2_033_000));
                assert_eq!(chunk.samples, 61);
                assert!(chunk.starts_segment);
                assert_eq!(&chunk.data[..], b"moof");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            roundtrip(LiveEvent::SessionEnded {
                stream: "s".into(),
                session: 7
            }),
            LiveEvent::SessionEnded { session: 7, .. }
        ));
    }

    #[test]
    fn rejects_bad_paths_and_names() {
        assert!(decode(
            "PUT",
            "/ingest/../sessions/1/x/init.mp4",
            None,
            Bytes::new()
        )
        .is_err());
        assert!(decode(
            "PUT",
            "/ingest/s/sessions/1/720p/segment",
            Some("pts_us=1"),
            Bytes::new()
        )
        .is_err());
        assert!(decode("GET", "/ingest/s/sessions/1", None, Bytes::new()).is_err());
        assert!(decode(
            "POST",
            "/ingest/s/sessions/1",
            None,
            Bytes::from_static(b"{")
        )
        .is_err());
    }
}
