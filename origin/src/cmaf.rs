//! Reading what the packager needs from a CMAF init segment: the track's handler, codec string
//! (RFC 6381, from `avcC` / `esds`) and coded size. Pure.

/// What an init segment says about its (single) track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    /// `video` or `audio` handler.
    pub is_video: bool,
    /// RFC 6381 codec string: `avc1.64001f`, `mp4a.40.2`.
    pub codec: String,
    /// Width from the visual sample entry (0 for audio).
    pub width: u32,
    /// Height from the visual sample entry (0 for audio).
    pub height: u32,
    /// Channel count (audio only).
    pub channels: u16,
}

/// Why an init segment could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("init segment: {0}")]
pub struct InitError(pub &'static str);

struct Boxes<'a> {
    data: &'a [u8],
}

/// A box's type, header length and total size.
type BoxHeader = ([u8; 4], usize, usize);

/// The box starting at `data[0]`: (type, header length, total size), or `None` when fewer than
/// 8 bytes are left. A size that does not fit `data` is an error.
fn box_header(data: &[u8]) -> Option<Result<BoxHeader, InitError>> {
    let head = data.get(..8)?;
    let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let kind = [head[4], head[5], head[6], head[7]];
    let (header, size) = match size {
        0 => (8, data.len()),
        1 => {
            let Some(large) = data.get(8..16) else {
                return Some(Err(InitError("truncated box")));
            };
            let mut b = [0u8; 8];
            b.copy_from_slice(large);
            (
                16,
                usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX),
            )
        }
        n => (8, n),
    };
    if size < header || size > data.len() {
        return Some(Err(InitError("box size out of range")));
    }
    Some(Ok((kind, header, size)))
}

impl<'a> Iterator for Boxes<'a> {
    type Item = Result<([u8; 4], &'a [u8]), InitError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (kind, header, size) = match box_header(self.data)? {
            Ok(h) => h,
            Err(e) => {
                self.data = &[];
                return Some(Err(e));
            }
        };
        let body = &self.data[header..size];
        self.data = &self.data[size..];
        Some(Ok((kind, body)))
    }
}

/// Where the `mfhd` sequence number of a chunk's `moof` is (`[styp] moof{mfhd …} mdat`).
fn mfhd_sequence_offset(data: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let (kind, header, size) = box_header(data.get(at..)?)?.ok()?;
        if &kind == b"moof" {
            let moof_end = at + size;
            let mut inner = at + header;
            loop {
                let (k, h, s) = box_header(data.get(inner..moof_end)?)?.ok()?;
                if &k == b"mfhd" {
                    // full box: version + flags, then the 32-bit sequence number
                    let offset = inner + h + 4;
                    return (offset + 4 <= inner + s).then_some(offset);
                }
                inner += s;
            }
        }
        at += size;
    }
}

/// The chunk with its `moof`'s `mfhd` sequence number set to `sequence` (a copy), or the chunk
/// unchanged when it has no `moof`. `cmafmux` numbers fragments, and gives every chunk of one
/// fragment the same number; players that check continuity across LL-HLS parts and rendition
/// switches (VLC) want +1 per `moof`.
pub fn with_fragment_sequence(data: &bytes::Bytes, sequence: u32) -> bytes::Bytes {
    let Some(offset) = mfhd_sequence_offset(data) else {
        return data.clone();
    };
    if data[offset..offset + 4] == sequence.to_be_bytes() {
        return data.clone();
    }
    let mut patched = bytes::BytesMut::from(&data[..]);
    patched[offset..offset + 4].copy_from_slice(&sequence.to_be_bytes());
    patched.freeze()
}

/// The `mfhd` sequence number of a chunk, if it has a `moof`.
pub fn fragment_sequence(data: &[u8]) -> Option<u32> {
    let offset = mfhd_sequence_offset(data)?;
    let b = data.get(offset..offset + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn boxes(data: &[u8]) -> Boxes<'_> {
    Boxes { data }
}

fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Result<&'a [u8], InitError> {
    for b in boxes(data) {
        let (k, body) = b?;
        if &k == kind {
            return Ok(body);
        }
    }
    Err(InitError("missing box"))
}

/// Parse an init segment (`ftyp` + `moov` with one `trak`).
pub fn parse_init(data: &[u8]) -> Result<TrackInfo, InitError> {
    let moov = child(data, b"moov")?;
    let trak = child(moov, b"trak")?;
    let mdia = child(trak, b"mdia")?;
    let hdlr = child(mdia, b"hdlr")?;
    let handler = hdlr.get(8..12).ok_or(InitError("short hdlr"))?;
    let stbl = child(child(mdia, b"minf")?, b"stbl")?;
    let stsd = child(stbl, b"stsd")?;
    // full box header (4) + entry count (4), then sample entries
    let entries = stsd.get(8..).ok_or(InitError("short stsd"))?;
    let (format, entry) = boxes(entries).next().ok_or(InitError("empty stsd"))??;
    match (handler, &format) {
        (b"vide", b"avc1" | b"avc3") => {
            let width = u16::from_be_bytes([
                *entry.get(24).ok_or(InitError("short avc1"))?,
                *entry.get(25).ok_or(InitError("short avc1"))?,
            ]);
            let height = u16::from_be_bytes([
                *entry.get(26).ok_or(InitError("short avc1"))?,
                *entry.get(27).ok_or(InitError("short avc1"))?,
            ]);
            let avcc = child(entry.get(78..).ok_or(InitError("short avc1"))?, b"avcC")?;
            let p = avcc.get(1..4).ok_or(InitError("short avcC"))?;
            Ok(TrackInfo {
                is_video: true,
                codec: format!(
                    "{}.{:02x}{:02x}{:02x}",
                    String::from_utf8_lossy(&format),
                    p[0],
                    p[1],
                    p[2]
                ),
                width: u32::from(width),
                height: u32::from(height),
                channels: 0,
            })
        }
        (b"soun", b"mp4a") => {
            let channels = u16::from_be_bytes([
                *entry.get(16).ok_or(InitError("short mp4a"))?,
                *entry.get(17).ok_or(InitError("short mp4a"))?,
            ]);
            let esds = child(entry.get(28..).ok_or(InitError("short mp4a"))?, b"esds")?;
            let (oti, asc) = parse_esds(esds.get(4..).ok_or(InitError("short esds"))?)?;
            let codec = match (oti, asc.first()) {
                (0x40, Some(&b0)) => {
                    let mut aot = b0 >> 3;
                    if aot == 31 {
                        let b1 = *asc.get(1).ok_or(InitError("short AudioSpecificConfig"))?;
                        aot = 32 + (((b0 & 7) << 3) | (b1 >> 5));
                    }
                    format!("mp4a.40.{aot}")
                }
                (oti, _) => format!("mp4a.{oti:02x}"),
            };
            Ok(TrackInfo {
                is_video: false,
                codec,
                width: 0,
                height: 0,
                channels,
            })
        }
        _ => Err(InitError("unsupported track type")),
    }
}

/// Returns (objectTypeIndication, DecoderSpecificInfo bytes) from ES descriptors.
fn parse_esds(mut d: &[u8]) -> Result<(u8, &[u8]), InitError> {
    fn descriptor(d: &[u8]) -> Result<(u8, &[u8], &[u8]), InitError> {
        let tag = *d.first().ok_or(InitError("short descriptor"))?;
        let mut len = 0usize;
        let mut i = 1;
        loop {
            let b = *d.get(i).ok_or(InitError("short descriptor length"))?;
            len = (len << 7) | usize::from(b & 0x7f);
            i += 1;
            if b & 0x80 == 0 || i > 4 {
                break;
            }
        }
        let body = d
            .get(i..i + len)
            .ok_or(InitError("descriptor overruns esds"))?;
        Ok((tag, body, &d[i + len..]))
    }
    let (tag, es, _) = descriptor(d)?;
    if tag != 3 {
        return Err(InitError("no ES_Descriptor"));
    }
    let flags = *es.get(2).ok_or(InitError("short ES_Descriptor"))?;
    let mut off = 3;
    if flags & 0x80 != 0 {
        off += 2;
    }
    if flags & 0x40 != 0 {
        off += 1 + usize::from(*es.get(off).ok_or(InitError("short ES_Descriptor"))?);
    }
    if flags & 0x20 != 0 {
        off += 2;
    }
    d = es.get(off..).ok_or(InitError("short ES_Descriptor"))?;
    let (tag, dc, _) = descriptor(d)?;
    if tag != 4 || dc.len() < 13 {
        return Err(InitError("no DecoderConfigDescriptor"));
    }
    let oti = dc[0];
    let (tag, dsi, _) = descriptor(&dc[13..])?;
    if tag != 5 {
        return Err(InitError("no DecoderSpecificInfo"));
    }
    Ok((oti, dsi))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(body);
        v
    }

    fn init(handler: &[u8; 4], entry: Vec<u8>) -> Vec<u8> {
        let mut hdlr = vec![0u8; 8];
        hdlr.extend_from_slice(handler);
        hdlr.extend_from_slice(&[0; 12]);
        let mut stsd = vec![0, 0, 0, 0, 0, 0, 0, 1];
        stsd.extend(entry);
        let stbl = bx(b"stbl", &bx(b"stsd", &stsd));
        let minf = bx(b"minf", &stbl);
        let mut mdia_body = bx(b"hdlr", &hdlr);
        mdia_body.extend(minf);
        let trak = bx(b"trak", &bx(b"mdia", &mdia_body));
        let mut out = bx(b"ftyp", b"cmfc\0\0\0\0");
        out.extend(bx(b"moov", &trak));
        out
    }

    #[test]
    fn reads_avc1_entry() {
        let mut entry = vec![0u8; 78];
        entry[24..26].copy_from_slice(&1280u16.to_be_bytes());
        entry[26..28].copy_from_slice(&720u16.to_be_bytes());
        entry.extend(bx(b"avcC", &[1, 0x64, 0x00, 0x1f, 0xff]));
        let info = parse_init(&init(b"vide", bx(b"avc1", &entry))).unwrap();
        assert_eq!(info.codec, "avc1.64001f");
        assert_eq!((info.width, info.height), (1280, 720));
    }

    #[test]
    fn reads_mp4a_entry() {
        let mut entry = vec![0u8; 28];
        entry[16..18].copy_from_slice(&2u16.to_be_bytes());
        let asc = [0x12, 0x10];
        let dsi = [vec![5, asc.len() as u8], asc.to_vec()].concat();
        let mut dc = vec![0x40, 0x15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        dc.extend(dsi);
        let dcd = [vec![4, dc.len() as u8], dc].concat();
        let mut es = vec![0, 1, 0];
        es.extend(dcd);
        let esd = [vec![3, 0x80, 0x80, es.len() as u8], es].concat();
        let esds = [vec![0, 0, 0, 0], esd].concat();
        entry.extend(bx(b"esds", &esds));
        let info = parse_init(&init(b"soun", bx(b"mp4a", &entry))).unwrap();
        assert_eq!(info.codec, "mp4a.40.2");
        assert_eq!(info.channels, 2);
    }

    #[test]
    fn renumbers_the_moof_of_a_chunk() {
        let mfhd = bx(b"mfhd", &[0, 0, 0, 0, 0, 0, 0, 7]);
        let traf = bx(b"traf", &bx(b"tfhd", &[0; 8]));
        let moof = bx(b"moof", &[mfhd, traf].concat());
        let chunk = [bx(b"styp", b"cmfc"), moof, bx(b"mdat", &[1, 2, 3])].concat();
        let chunk = bytes::Bytes::from(chunk);
        assert_eq!(fragment_sequence(&chunk), Some(7));
        let renumbered = with_fragment_sequence(&chunk, 42);
        assert_eq!(fragment_sequence(&renumbered), Some(42));
        assert_eq!(renumbered.len(), chunk.len());
        assert_eq!(&renumbered[renumbered.len() - 3..], &[1, 2, 3]);
        // no moof, or a truncated one: left alone
        let mdat = bytes::Bytes::from(bx(b"mdat", &[9; 16]));
        assert_eq!(with_fragment_sequence(&mdat, 5), mdat);
        let cut = chunk.slice(..chunk.len() - 20);
        assert_eq!(fragment_sequence(&cut), None);
        assert_eq!(with_fragment_sequence(&cut, 5), cut);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_init(b"not an mp4").is_err());
        assert!(parse_init(&[0, 0, 0, 200, b'm', b'o', b'o', b'v']).is_err());
    }
}
