//! Cache policy as pure functions of (request, response, now): the cache key, whether and for
//! how long a response may be cached, how long it may still be served when the upstream fails,
//! and the `Age` to report.

use std::time::Duration;

/// Query parameters that select different content (LL-HLS delivery directives). Everything
/// else — tokens, cache-busters — is dropped from the key and from the upstream request.
const KEYED_PARAMS: [&str; 3] = ["_HLS_msn", "_HLS_part", "_HLS_skip"];

/// The cache key: path plus the LL-HLS directives in a fixed order.
pub fn cache_key(path: &str, query: Option<&str>) -> String {
    let mut params: Vec<(&str, &str)> = query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| KEYED_PARAMS.contains(k))
        .collect();
    params.sort();
    params.dedup_by(|a, b| a.0 == b.0);
    if params.is_empty() {
        return path.to_string();
    }
    let q: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{path}?{}", q.join("&"))
}

/// What the edge does with a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// May be stored at all.
    pub cacheable: bool,
    /// Served without asking upstream for this long after it was produced (minus `Age`).
    pub ttl: Duration,
    /// After `ttl`, still served while the upstream fails, for this long.
    pub stale_if_error: Duration,
}

impl Freshness {
    const NO_STORE: Freshness = Freshness {
        cacheable: false,
        ttl: Duration::ZERO,
        stale_if_error: Duration::ZERO,
    };
}

/// Settings the policy needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicySettings {
    /// Longest a 404 is cached (short: the segment may appear any moment).
    pub negative_ttl: Duration,
    /// How long a playlist/manifest may be served stale when the upstream fails (≈ 2 target
    /// durations), unless the response says otherwise.
    pub playlist_grace: Duration,
}

fn directive(cache_control: &str, name: &str) -> Option<Option<u64>> {
    cache_control.split(',').find_map(|d| {
        let d = d.trim();
        let (k, v) = d.split_once('=').unwrap_or((d, ""));
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').parse().ok())
    })
}

/// Is this a playlist or manifest (short-lived, served stale briefly)?
pub fn is_manifest(path: &str) -> bool {
    path.ends_with(".m3u8") || path.ends_with(".mpd")
}

/// Freshness of a response from its status and `Cache-Control`.
pub fn freshness(
    path: &str,
    status: u16,
    cache_control: Option<&str>,
    settings: &PolicySettings,
) -> Freshness {
    let cc = cache_control.unwrap_or("");
    if directive(cc, "no-store").is_some() || directive(cc, "private").is_some() {
        return Freshness::NO_STORE;
    }
    let max_age = directive(cc, "s-maxage")
        .flatten()
        .or_else(|| directive(cc, "max-age").flatten());
    match status {
        200 | 203 | 204 | 206 | 301 | 410 => {}
        404 => {
            let ttl = max_age
                .map(Duration::from_secs)
                .unwrap_or(settings.negative_ttl)
                .min(settings.negative_ttl);
            return Freshness {
                cacheable: !ttl.is_zero(),
                ttl,
                stale_if_error: Duration::ZERO,
            };
        }
        _ => return Freshness::NO_STORE,
    }
    let Some(max_age) = max_age else {
        return Freshness::NO_STORE;
    };
    let stale_if_error = directive(cc, "stale-if-error")
        .flatten()
        .map(Duration::from_secs)
        .unwrap_or(if is_manifest(path) {
            settings.playlist_grace
        } else {
            // media never changes: serve it stale as long as it is in the cache
            Duration::from_secs(max_age)
        });
    Freshness {
        cacheable: true,
        ttl: Duration::from_secs(max_age),
        stale_if_error,
    }
}

/// `Age` of a stored response: the upstream's `Age` when it arrived plus time since.
pub fn age(upstream_age: Duration, stored_for: Duration) -> Duration {
    upstream_age + stored_for
}

/// Is a stored response still fresh?
pub fn is_fresh(f: &Freshness, upstream_age: Duration, stored_for: Duration) -> bool {
    age(upstream_age, stored_for) < f.ttl
}

/// May a stored response be served because the upstream failed?
pub fn usable_stale(f: &Freshness, upstream_age: Duration, stored_for: Duration) -> bool {
    age(upstream_age, stored_for) < f.ttl + f.stale_if_error
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: PolicySettings = PolicySettings {
        negative_ttl: Duration::from_secs(1),
        playlist_grace: Duration::from_secs(4),
    };

    #[test]
    fn key_keeps_only_ll_hls_directives() {
        assert_eq!(cache_key("/live/a/1.m4s", None), "/live/a/1.m4s");
        assert_eq!(
            cache_key("/live/a/1.m4s", Some("token=abc&x=1")),
            "/live/a/1.m4s"
        );
        assert_eq!(
            cache_key(
                "/live/a/v/media.m3u8",
                Some("token=t&_HLS_part=2&_HLS_msn=10")
            ),
            "/live/a/v/media.m3u8?_HLS_msn=10&_HLS_part=2"
        );
        assert_eq!(
            cache_key("/p", Some("_HLS_skip=YES&_HLS_skip=v2")),
            "/p?_HLS_skip=YES"
        );
    }

    #[test]
    fn origin_headers() {
        let seg = freshness(
            "/a/1.m4s",
            200,
            Some("public, max-age=86400, immutable"),
            &S,
        );
        assert!(seg.cacheable);
        assert_eq!(seg.ttl, Duration::from_secs(86400));
        assert_eq!(seg.stale_if_error, Duration::from_secs(86400));
        let pl = freshness("/a/media.m3u8", 200, Some("public, max-age=1"), &S);
        assert_eq!(
            (pl.ttl, pl.stale_if_error),
            (Duration::from_secs(1), Duration::from_secs(4))
        );
        let nf = freshness("/a/9.m4s", 404, Some("public, max-age=1"), &S);
        assert!(nf.cacheable);
        assert_eq!(nf.ttl, Duration::from_secs(1));
        assert_eq!(nf.stale_if_error, Duration::ZERO);
        assert!(!freshness("/a", 503, Some("max-age=10"), &S).cacheable);
        assert!(!freshness("/a", 200, Some("no-store"), &S).cacheable);
        assert!(!freshness("/a", 200, None, &S).cacheable);
        assert!(!freshness("/api/time", 200, Some("no-store"), &S).cacheable);
        let sie = freshness(
            "/a/media.m3u8",
            200,
            Some("max-age=1, stale-if-error=10"),
            &S,
        );
        assert_eq!(sie.stale_if_error, Duration::from_secs(10));
    }

    #[test]
    fn fresh_then_stale_then_gone() {
        let f = freshness("/a/media.m3u8", 200, Some("max-age=1"), &S);
        let ms = Duration::from_millis;
        assert!(is_fresh(&f, Duration::ZERO, ms(900)));
        assert!(!is_fresh(&f, ms(500), ms(600)), "upstream Age counts");
        assert!(usable_stale(&f, Duration::ZERO, ms(4500)));
        assert!(!usable_stale(&f, Duration::ZERO, ms(5100)));
    }
}
