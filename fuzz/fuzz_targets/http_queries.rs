//! What players put in URLs: LL-HLS delivery directives (`_HLS_msn/_HLS_part/_HLS_skip`) as
//! the origin parses them, the edge's cache key from path + query, playback tokens from a query
//! or cookie and their verification. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidecast_common::token::{find_token, TokenSigner};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = text.split_once('?').unwrap_or((text, ""));
    let _ = tidecast_origin::llhls::parse_query(Some(query));
    let _ = tidecast_edge::policy::cache_key(path, Some(query));
    let _ = tidecast_edge::policy::is_manifest(path);
    let signer = TokenSigner::new(b"fuzz");
    if let Some(token) = find_token(Some(query), Some(query)) {
        let _ = signer.verify(token, path, "127.0.0.1", 1_800_000_000);
    }
});
