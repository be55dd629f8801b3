//! A strict reader of the RTMP chunk stream (and the AMF0 inside command and data messages)
//! that sees every byte before rml_rtmp does. Pure: bytes in, `Ok` or the reason to close.
//!
//! rml_rtmp trusts its input in ways a hostile client can exploit: a chunk that restarts a
//! message with a shorter length underflows `length - received` and panics with `capacity
//! overflow`; an extended timestamp below `0xFFFFFF` on a delta header underflows; chunks of
//! another chunk stream in the middle of a message are glued onto it; AMF0 objects nest without
//! limit (a stack overflow, which not even `catch_unwind` catches); any Set Chunk Size up to
//! 2^31 is applied. The guard parses the chunk stream exactly as rml_rtmp does and refuses all
//! of these, so what reaches rml_rtmp is well-formed. It also bounds memory per connection:
//! media payloads are counted, not buffered; command/data messages (the only ones it keeps, to
//! check their AMF0) are at most [`MAX_COMMAND_MESSAGE`] bytes; at most [`MAX_CHUNK_STREAMS`]
//! chunk stream ids are remembered.

use std::collections::HashMap;

/// Largest RTMP chunk size a client may announce (OBS uses 4096, ffmpeg 4096–65536).
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Largest command or data message (AMF0/AMF3 command, `@setDataFrame`/`onMetaData`).
pub const MAX_COMMAND_MESSAGE: usize = 64 * 1024;
/// Distinct chunk stream ids one connection may use (encoders use 2–8).
pub const MAX_CHUNK_STREAMS: usize = 64;
/// Deepest AMF0 nesting accepted (real metadata is 2–3 levels).
pub const MAX_AMF_DEPTH: usize = 16;

/// RTMP's initial chunk size.
const INITIAL_CHUNK_SIZE: usize = 128;
/// A 24-bit timestamp field with this value means "extended timestamp follows".
const EXTENDED: u32 = 0x00FF_FFFF;

/// Why the chunk stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    /// A compressed header on a chunk stream that has no previous header.
    #[error("chunk stream {0}: compressed header without a previous one")]
    NoPreviousHeader(u32),
    /// A chunk of another message (or a new header) while a message is incomplete.
    #[error("chunk stream {csid}: chunk interrupts an incomplete message on stream {open}")]
    Interleaved {
        /// The chunk stream of the new chunk.
        csid: u32,
        /// The chunk stream of the incomplete message.
        open: u32,
    },
    /// An extended timestamp delta below `0xFFFFFF`.
    #[error("extended timestamp delta {0:#x} below 0xFFFFFF")]
    ExtendedTimestamp(u32),
    /// Too many chunk stream ids.
    #[error("more than {MAX_CHUNK_STREAMS} chunk streams")]
    TooManyChunkStreams,
    /// Set Chunk Size of 0 or above [`MAX_CHUNK_SIZE`].
    #[error("absurd chunk size {0}")]
    ChunkSize(u32),
    /// A protocol control message of the wrong length.
    #[error("protocol control message type {type_id} with {len} bytes")]
    ControlLength {
        /// Message type.
        type_id: u8,
        /// Its length.
        len: u32,
    },
    /// A command or data message over [`MAX_COMMAND_MESSAGE`].
    #[error("command/data message of {0} bytes")]
    CommandTooLong(u32),
    /// Malformed AMF0 in a command or data message.
    #[error("malformed AMF0: {0}")]
    Amf(&'static str),
}

/// The header fields rml_rtmp carries from one chunk to the next on a chunk stream.
#[derive(Debug, Clone, Copy)]
struct Previous {
    length: u32,
    type_id: u8,
    timestamp_field: u32,
}

/// The message whose chunks are arriving.
#[derive(Debug)]
struct Open {
    csid: u32,
    type_id: u8,
    length: usize,
    received: usize,
    /// Kept for command/data messages (checked when complete); media is only counted.
    body: Option<Vec<u8>>,
}

/// See the module docs. One per connection, fed every byte after the handshake.
#[derive(Debug)]
pub struct ChunkStreamGuard {
    chunk_size: usize,
    previous: HashMap<u32, Previous>,
    /// Bytes of a chunk header not complete yet (at most 18).
    header: Vec<u8>,
    /// Payload bytes of the current chunk still to come; 0 = a header is next.
    chunk_left: usize,
    open: Option<Open>,
}

impl Default for ChunkStreamGuard {
    fn default() -> Self {
        ChunkStreamGuard {
            chunk_size: INITIAL_CHUNK_SIZE,
            previous: HashMap::new(),
            header: Vec::with_capacity(18),
            chunk_left: 0,
            open: None,
        }
    }
}

/// A parsed chunk header.
struct ChunkHeader {
    fmt: u8,
    csid: u32,
    /// Header fields present (fmt 0/1/2 timestamp; fmt 0/1 length and type).
    timestamp_field: Option<u32>,
    length_type: Option<(u32, u8)>,
    extended: Option<u32>,
}

impl ChunkStreamGuard {
    /// A guard for a new connection (chunk size 128).
    pub fn new() -> Self {
        Self::default()
    }

    /// Check the next bytes of the chunk stream. After an error the connection must be closed
    /// (the guard's state is then meaningless).
    pub fn check(&mut self, mut bytes: &[u8]) -> Result<(), GuardError> {
        while !bytes.is_empty() {
            if self.chunk_left > 0 {
                let take = self.chunk_left.min(bytes.len());
                self.payload(&bytes[..take])?;
                bytes = &bytes[take..];
                continue;
            }
            // header bytes: take one at a time until the header is complete (headers are
            // short; payloads are taken in slices above)
            self.header.push(bytes[0]);
            bytes = &bytes[1..];
            if let Some(header) = self.parse_header()? {
                self.header.clear();
                self.start_chunk(header)?;
            }
        }
        Ok(())
    }

    /// The header in `self.header` if complete.
    fn parse_header(&self) -> Result<Option<ChunkHeader>, GuardError> {
        let h = &self.header;
        let fmt = h[0] >> 6;
        let (csid, basic) = match h[0] & 0x3F {
            0 => match h.get(1) {
                Some(&b) => (u32::from(b) + 64, 2),
                None => return Ok(None),
            },
            1 => match (h.get(1), h.get(2)) {
                (Some(&lo), Some(&hi)) => (u32::from(hi) * 256 + u32::from(lo) + 64, 3),
                _ => return Ok(None),
            },
            n => (u32::from(n), 1),
        };
        let message_header = [11, 7, 3, 0][usize::from(fmt)];
        if h.len() < basic + message_header {
            return Ok(None);
        }
        let m = &h[basic..basic + message_header];
        let u24 = |b: &[u8]| u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        let timestamp_field = (fmt <= 2).then(|| u24(&m[0..3]));
        let length_type = (fmt <= 1).then(|| (u24(&m[3..6]), m[6]));
        if fmt != 0 && !self.previous.contains_key(&csid) {
            return Err(GuardError::NoPreviousHeader(csid));
        }
        let effective_field = timestamp_field
            .or_else(|| self.previous.get(&csid).map(|p| p.timestamp_field))
            .unwrap_or(0);
        let mut extended = None;
        if effective_field >= EXTENDED {
            let at = basic + message_header;
            let Some(b) = h.get(at..at + 4) else {
                return Ok(None);
            };
            extended = Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        }
        Ok(Some(ChunkHeader {
            fmt,
            csid,
            timestamp_field,
            length_type,
            extended,
        }))
    }

    fn start_chunk(&mut self, header: ChunkHeader) -> Result<(), GuardError> {
        let prev = self.previous.get(&header.csid).copied();
        if let Some(open) = &self.open {
            // rml_rtmp keeps one message buffer for all chunk streams: a continuation must be
            // a type-3 chunk of the same stream
            if header.csid != open.csid || header.fmt != 3 {
                return Err(GuardError::Interleaved {
                    csid: header.csid,
                    open: open.csid,
                });
            }
        } else if header.fmt != 0 {
            // a delta timestamp in an extended field is added as (value - 0xFFFFFF)
            if let Some(ext) = header.extended.filter(|&e| e < EXTENDED) {
                return Err(GuardError::ExtendedTimestamp(ext));
            }
        }
        if prev.is_none() && self.previous.len() >= MAX_CHUNK_STREAMS {
            return Err(GuardError::TooManyChunkStreams);
        }
        let (length, type_id) = match (header.length_type, prev) {
            (Some(lt), _) => lt,
            (None, Some(p)) => (p.length, p.type_id),
            (None, None) => return Err(GuardError::NoPreviousHeader(header.csid)),
        };
        let timestamp_field = header
            .timestamp_field
            .or(prev.map(|p| p.timestamp_field))
            .unwrap_or(0);
        self.previous.insert(
            header.csid,
            Previous {
                length,
                type_id,
                timestamp_field,
            },
        );
        if self.open.is_none() {
            let body = match type_id {
                15 | 17 | 18 | 20 => {
                    if length as usize > MAX_COMMAND_MESSAGE {
                        return Err(GuardError::CommandTooLong(length));
                    }
                    Some(Vec::with_capacity(length as usize))
                }
                1..=6 => Some(Vec::with_capacity(8)),
                _ => None,
            };
            self.open = Some(Open {
                csid: header.csid,
                type_id,
                length: length as usize,
                received: 0,
                body,
            });
        }
        let open = self
            .open
            .as_ref()
            .map(|o| o.length - o.received)
            .unwrap_or(0);
        self.chunk_left = open.min(self.chunk_size);
        if self.chunk_left == 0 {
            // an empty message is complete with its header
            self.complete()?;
        }
        Ok(())
    }

    fn payload(&mut self, data: &[u8]) -> Result<(), GuardError> {
        self.chunk_left -= data.len();
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        open.received += data.len();
        if let Some(body) = open.body.as_mut() {
            if body.len() + data.len() <= MAX_COMMAND_MESSAGE {
                body.extend_from_slice(data);
            }
        }
        if open.received == open.length {
            self.chunk_left = 0;
            self.complete()?;
        }
        Ok(())
    }

    /// A message is complete: check it.
    fn complete(&mut self) -> Result<(), GuardError> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let body = open.body.unwrap_or_default();
        let len = open.length as u32;
        match open.type_id {
            // Set Chunk Size, Abort, Acknowledgement, Window Ack Size: 4 bytes; Set Peer
            // Bandwidth: 5; User Control: event type + at least 4 bytes of data
            1 | 2 | 3 | 5 if open.length != 4 => Err(GuardError::ControlLength {
                type_id: open.type_id,
                len,
            }),
            6 if open.length != 5 => Err(GuardError::ControlLength { type_id: 6, len }),
            4 if open.length < 6 => Err(GuardError::ControlLength { type_id: 4, len }),
            1 => {
                let size = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                if size == 0 || size > MAX_CHUNK_SIZE {
                    return Err(GuardError::ChunkSize(size));
                }
                self.chunk_size = size as usize;
                Ok(())
            }
            // data messages: AMF0 (type 15, flagged AMF3, is read as AMF0 too)
            15 | 18 => check_data(&body),
            20 => check_command(&body),
            // "AMF3" commands: AMF0 after a 0 format byte, when there is one (as rml_rtmp reads)
            17 => check_command(body.strip_prefix(&[0]).unwrap_or(&body)),
            _ => Ok(()),
        }
    }
}

/// Check a sequence of AMF0 values the way rml_amf0 reads them, only stricter: every value
/// complete, strings UTF-8, known markers only, nesting at most [`MAX_AMF_DEPTH`]. Returns how
/// many top-level values rml_amf0 will see.
pub fn check_amf0(mut data: &[u8]) -> Result<usize, GuardError> {
    let mut values = 0;
    while let Some(&marker) = data.first() {
        if marker == 0x09 {
            // rml_amf0 stops at an object-end marker at the top level
            break;
        }
        data = amf_value(data, 0)?;
        values += 1;
    }
    Ok(values)
}

/// A data message. rml_rtmp reads `@setDataFrame` as `@setDataFrame`, `onMetaData`, metadata
/// and indexes the last two without checking they are there (`data[0]`, `data.remove(1)`).
fn check_data(data: &[u8]) -> Result<(), GuardError> {
    let values = check_amf0(data)?;
    let set_data_frame = data.first() == Some(&0x02)
        && data.get(1..3) == Some(&[0, 13])
        && data.get(3..16) == Some(b"@setDataFrame");
    if set_data_frame && values < 3 {
        return Err(GuardError::Amf(
            "@setDataFrame without a handler name and metadata",
        ));
    }
    Ok(())
}

/// A command: name (string), transaction id (number), command object, then arguments.
/// rml_rtmp takes the first three values without checking there are three.
fn check_command(data: &[u8]) -> Result<(), GuardError> {
    if check_amf0(data)? < 3 {
        return Err(GuardError::Amf(
            "command without name, transaction id and object",
        ));
    }
    if data.first() != Some(&0x02) {
        return Err(GuardError::Amf("command name is not a string"));
    }
    Ok(())
}

fn take(data: &[u8], n: usize) -> Result<(&[u8], &[u8]), GuardError> {
    if data.len() < n {
        return Err(GuardError::Amf("truncated value"));
    }
    Ok(data.split_at(n))
}

fn amf_string(data: &[u8]) -> Result<&[u8], GuardError> {
    let (len, rest) = take(data, 2)?;
    let (text, rest) = take(rest, usize::from(u16::from_be_bytes([len[0], len[1]])))?;
    std::str::from_utf8(text).map_err(|_| GuardError::Amf("string is not UTF-8"))?;
    Ok(rest)
}

/// Object properties until the `00 00 09` end.
fn amf_properties(mut data: &[u8], depth: usize) -> Result<&[u8], GuardError> {
    loop {
        if data.get(..3) == Some(&[0, 0, 9]) {
            return Ok(&data[3..]);
        }
        let (len, _) = take(data, 2)?;
        if len == [0, 0] {
            return Err(GuardError::Amf("empty property name without object end"));
        }
        data = amf_string(data)?;
        if data.first() == Some(&0x09) {
            return Err(GuardError::Amf("property without a value"));
        }
        data = amf_value(data, depth)?;
    }
}

/// One value; returns the rest.
fn amf_value(data: &[u8], depth: usize) -> Result<&[u8], GuardError> {
    if depth > MAX_AMF_DEPTH {
        return Err(GuardError::Amf("nested too deeply"));
    }
    let (marker, rest) = take(data, 1)?;
    match marker[0] {
        0x00 => Ok(take(rest, 8)?.1),                        // number
        0x01 => Ok(take(rest, 1)?.1),                        // boolean
        0x02 => amf_string(rest),                            // string
        0x03 => amf_properties(rest, depth + 1),             // object
        0x05 | 0x06 => Ok(rest),                             // null, undefined
        0x08 => amf_properties(take(rest, 4)?.1, depth + 1), // ECMA array (count ignored)
        0x0A => {
            // strict array: `count` values
            let (count, mut rest) = take(rest, 4)?;
            let count = u32::from_be_bytes([count[0], count[1], count[2], count[3]]) as usize;
            if count > rest.len() {
                return Err(GuardError::Amf("strict array longer than the message"));
            }
            for _ in 0..count {
                if rest.first() == Some(&0x09) {
                    return Err(GuardError::Amf("strict array ends early"));
                }
                rest = amf_value(rest, depth + 1)?;
            }
            Ok(rest)
        }
        _ => Err(GuardError::Amf("unsupported AMF0 marker")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A type-0 chunk header + payload (one chunk; payload ≤ 128 bytes).
    fn chunk0(csid: u8, type_id: u8, ts: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![csid & 0x3F];
        v.extend_from_slice(&ts.min(EXTENDED).to_be_bytes()[1..]);
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        v.push(type_id);
        v.extend_from_slice(&1u32.to_le_bytes());
        if ts >= EXTENDED {
            v.extend_from_slice(&ts.to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    fn amf_command(name: &str, extra: &[u8]) -> Vec<u8> {
        let mut v = vec![0x02];
        v.extend_from_slice(&(name.len() as u16).to_be_bytes());
        v.extend_from_slice(name.as_bytes());
        v.push(0x00);
        v.extend_from_slice(&1f64.to_be_bytes());
        v.extend_from_slice(extra);
        v
    }

    #[test]
    fn accepts_a_real_connect_and_media_split_across_chunks() {
        let mut g = ChunkStreamGuard::new();
        // connect({app: "live"}) as one chunk
        let mut obj = vec![0x03, 0x00, 0x03];
        obj.extend_from_slice(b"app");
        obj.extend_from_slice(&[0x02, 0x00, 0x04]);
        obj.extend_from_slice(b"live");
        obj.extend_from_slice(&[0, 0, 9]);
        g.check(&chunk0(3, 20, 0, &amf_command("connect", &obj)))
            .unwrap();
        // set chunk size 4096
        g.check(&chunk0(2, 1, 0, &4096u32.to_be_bytes())).unwrap();
        // a 5000-byte video message: 4096 + type-3 continuation of 904, fed in odd slices
        let payload = vec![0x17u8; 5000];
        let mut bytes = vec![6];
        bytes.extend_from_slice(&[0, 0, 33]);
        bytes.extend_from_slice(&5000u32.to_be_bytes()[1..]);
        bytes.push(9);
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&payload[..4096]);
        bytes.push(0xC0 | 6);
        bytes.extend_from_slice(&payload[4096..]);
        for piece in bytes.chunks(7) {
            g.check(piece).unwrap();
        }
        // the next message on that stream with a type-2 header (delta only)
        let mut next = vec![0x80 | 6, 0, 0, 33];
        next.extend_from_slice(&payload[..4096]);
        next.push(0xC0 | 6);
        next.extend_from_slice(&payload[4096..]);
        g.check(&next).unwrap();
        assert!(g.open.is_none() && g.chunk_left == 0);
    }

    #[test]
    fn refuses_what_makes_rml_rtmp_panic() {
        // a new type-0 header with a shorter length in the middle of a message (the
        // `capacity overflow` panic)
        let mut g = ChunkStreamGuard::new();
        let mut bytes = vec![6, 0, 0, 0, 0, 1, 0, 9, 1, 0, 0, 0];
        bytes.extend_from_slice(&[0u8; 128]);
        bytes.extend(chunk0(6, 9, 0, &[1, 2]));
        assert!(matches!(
            g.check(&bytes),
            Err(GuardError::Interleaved { .. })
        ));
        // another chunk stream in the middle of a message
        let mut g = ChunkStreamGuard::new();
        let mut bytes = vec![6, 0, 0, 0, 0, 1, 0, 9, 1, 0, 0, 0];
        bytes.extend_from_slice(&[0u8; 128]);
        bytes.extend(chunk0(4, 8, 0, &[0xAF, 1]));
        assert!(g.check(&bytes).is_err());
        // a compressed header first
        assert_eq!(
            ChunkStreamGuard::new().check(&[0xC0 | 5]),
            Err(GuardError::NoPreviousHeader(5))
        );
        // an extended delta below 0xFFFFFF
        let mut g = ChunkStreamGuard::new();
        g.check(&chunk0(6, 9, 0, &[1])).unwrap();
        let bad = [0x40 | 6, 0xFF, 0xFF, 0xFF, 0, 0, 1, 9, 0, 0, 0, 5, 1];
        assert_eq!(g.check(&bad), Err(GuardError::ExtendedTimestamp(5)));
        // absurd chunk sizes, short control messages
        for size in [0u32, MAX_CHUNK_SIZE + 1, 0x7FFF_FFFF] {
            let r = ChunkStreamGuard::new().check(&chunk0(2, 1, 0, &size.to_be_bytes()));
            assert_eq!(r, Err(GuardError::ChunkSize(size)));
        }
        assert!(ChunkStreamGuard::new()
            .check(&chunk0(2, 1, 0, &[0, 1]))
            .is_err());
        // too many chunk streams
        let mut g = ChunkStreamGuard::new();
        let many: Vec<u8> = (0..=MAX_CHUNK_STREAMS as u8)
            .flat_map(|i| {
                let mut c = vec![0, i]; // 2-byte basic header: csid 64 + i
                c.extend_from_slice(&chunk0(0, 8, 0, &[0xAF])[1..]);
                c
            })
            .collect();
        assert_eq!(g.check(&many), Err(GuardError::TooManyChunkStreams));
    }

    #[test]
    fn set_data_frame_needs_a_name_and_metadata() {
        let string = |t: &str| {
            let mut v = vec![0x02, 0, t.len() as u8];
            v.extend_from_slice(t.as_bytes());
            v
        };
        let sdf = string("@setDataFrame");
        let name = string("onMetaData");
        // a fuzzer found these: rml_rtmp panics on `data.remove(1)` / `data[0]`
        assert!(check_data(&sdf).is_err());
        assert!(check_data(&[sdf.clone(), name.clone()].concat()).is_err());
        let meta = [
            0x03, 0, 5, b'w', b'i', b'd', b't', b'h', 0x00, 0x40, 0x94, 0, 0, 0, 0, 0, 0, 0, 0, 9,
        ];
        assert_eq!(
            check_data(&[sdf.clone(), name.clone(), meta.to_vec()].concat()),
            Ok(())
        );
        // other data messages are only checked as AMF0
        assert_eq!(check_data(&[name, meta.to_vec()].concat()), Ok(()));
        assert_eq!(check_data(&string("@setDataFrameX")), Ok(()));
        // and the whole chunk stream refuses it
        let mut g = ChunkStreamGuard::new();
        assert!(g.check(&chunk0(4, 18, 0, &sdf)).is_err());
    }

    #[test]
    fn amf0_is_checked_strictly() {
        assert_eq!(check_amf0(&amf_command("publish", &[0x05])), Ok(3));
        assert_eq!(check_command(&amf_command("publish", &[0x05])), Ok(()));
        // fewer than three values: rml_rtmp's `drain(..3)` would panic
        assert!(check_command(&amf_command("publish", &[])).is_err());
        assert!(
            check_command(&[0x05, 0x05, 0x05]).is_err(),
            "name not a string"
        );
        // nesting bomb: objects inside objects
        let mut bomb = Vec::new();
        for _ in 0..10_000 {
            bomb.extend_from_slice(&[0x03, 0x00, 0x01, b'a']);
        }
        assert_eq!(check_amf0(&bomb), Err(GuardError::Amf("nested too deeply")));
        assert!(
            check_amf0(&[0x02, 0x00, 0x05, b'a']).is_err(),
            "short string"
        );
        assert!(check_amf0(&[0x02, 0x00, 0x01, 0xFF]).is_err(), "not UTF-8");
        assert!(
            check_amf0(&[0x0C, 0, 0, 0, 1, b'a']).is_err(),
            "long string"
        );
        assert!(check_amf0(&[0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x05]).is_err());
        assert!(
            check_amf0(&[0x03, 0x00, 0x01, b'a', 0x00]).is_err(),
            "cut number"
        );
        assert_eq!(
            check_amf0(&[0x08, 0, 0, 0, 1, 0, 1, b'k', 0x05, 0, 0, 9]),
            Ok(1)
        );
        // a command message too long to be one
        let mut g = ChunkStreamGuard::new();
        let mut big = vec![3, 0, 0, 0, 0x01, 0x00, 0x01, 20, 0, 0, 0, 0];
        big[4..7].copy_from_slice(&((MAX_COMMAND_MESSAGE + 1) as u32).to_be_bytes()[1..]);
        assert!(matches!(g.check(&big), Err(GuardError::CommandTooLong(_))));
        // malformed AMF inside a chunked command is refused when the message completes
        let mut g = ChunkStreamGuard::new();
        assert!(g
            .check(&chunk0(3, 20, 0, &[0x02, 0x00, 0x09, b'x']))
            .is_err());
    }
}
