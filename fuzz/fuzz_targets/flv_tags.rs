//! FLV video/audio tag bodies, AVC decoder configuration records and SPS NAL units straight
//! into the parsers (the `rtmp_session` target reaches them through the session too).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidecast_ingest::flv;

fuzz_target!(|data: &[u8]| {
    let _ = flv::parse_video(data);
    let _ = flv::parse_audio(data);
    let _ = flv::parse_avc_config(data);
    let _ = flv::parse_sps(data);
});
