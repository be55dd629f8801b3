//! The region director: sends a player to a healthy edge in its region, else to the nearest
//! region that has one, and writes HLS Content Steering (`EXT-X-CONTENT-STEERING`) answers with
//! the same preference. Pure: health and the player's region are passed in.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One edge the director knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeEntry {
    /// Its region label.
    pub region: String,
    /// Base URL players use (`http://edge-eu:8081`).
    pub url: String,
    /// Last probe succeeded.
    pub healthy: bool,
}

/// Edges by region and the fallback order between regions.
#[derive(Debug, Clone, Default)]
pub struct Director {
    edges: Vec<EdgeEntry>,
    nearest: BTreeMap<String, Vec<String>>,
}

/// Why no edge could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoEdge {
    /// No edge is healthy anywhere.
    AllDown,
}

impl Director {
    /// From `region=url` entries (e.g. `eu=http://edge-eu:8081`) and, per region, the other
    /// regions in order of preference (`eu` → `["us", "ap"]`); regions not listed fall back in
    /// configuration order.
    pub fn new(
        entries: &[String],
        nearest: &BTreeMap<String, Vec<String>>,
    ) -> Result<Self, String> {
        let mut edges = Vec::new();
        for e in entries {
            let (region, url) = e
                .split_once('=')
                .ok_or_else(|| format!("director entry {e:?}: expected REGION=URL"))?;
            if region.is_empty() || !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "director entry {e:?}: expected REGION=http(s)://HOST:PORT"
                ));
            }
            edges.push(EdgeEntry {
                region: region.to_string(),
                url: url.trim_end_matches('/').to_string(),
                healthy: true,
            });
        }
        Ok(Director {
            edges,
            nearest: nearest.clone(),
        })
    }

    /// Known edges.
    pub fn edges(&self) -> &[EdgeEntry] {
        &self.edges
    }

    /// Record a probe of the edge at `url`.
    pub fn set_health(&mut self, url: &str, healthy: bool) {
        for e in self.edges.iter_mut().filter(|e| e.url == url) {
            e.healthy = healthy;
        }
    }

    /// Regions in the order a player in `region` should try them (its own first).
    pub fn region_order(&self, region: &str) -> Vec<String> {
        let mut order = vec![region.to_string()];
        for r in self.nearest.get(region).into_iter().flatten() {
            if !order.contains(r) {
                order.push(r.clone());
            }
        }
        for e in &self.edges {
            if !order.contains(&e.region) {
                order.push(e.region.clone());
            }
        }
        order
    }

    /// The edge for a player in `region`; `key` (e.g. the stream) spreads players over the
    /// healthy edges of one region deterministically.
    pub fn choose(&self, region: &str, key: &str) -> Result<&EdgeEntry, NoEdge> {
        for r in self.region_order(region) {
            let healthy: Vec<&EdgeEntry> = self
                .edges
                .iter()
                .filter(|e| e.region == r && e.healthy)
                .collect();
            if !healthy.is_empty() {
                let spread = key.bytes().fold(0usize, |h, b| {
                    h.wrapping_mul(31).wrapping_add(usize::from(b))
                });
                return Ok(healthy[spread % healthy.len()]);
            }
        }
        Err(NoEdge::AllDown)
    }

    /// An HLS Content Steering manifest: pathways (regions with a healthy edge) in preference
    /// order for `region`.
    pub fn steering_manifest(&self, region: &str, reload_uri: &str, ttl_secs: u64) -> String {
        let pathways: Vec<String> = self
            .region_order(region)
            .into_iter()
            .filter(|r| self.edges.iter().any(|e| &e.region == r && e.healthy))
            .collect();
        let list: Vec<String> = pathways.iter().map(|p| format!("\"{p}\"")).collect();
        format!(
            "{{\"VERSION\":1,\"TTL\":{ttl_secs},\"RELOAD-URI\":\"{reload_uri}\",\"PATHWAY-PRIORITY\":[{}]}}",
            list.join(",")
        )
    }

    /// A multivariant playlist with one copy of every variant and rendition group per region
    /// (`PATHWAY-ID`), each pointing at that region's edge, and `EXT-X-CONTENT-STEERING`.
    pub fn steered_master(
        &self,
        master: &str,
        stream: &str,
        server_uri: &str,
        region: &str,
    ) -> String {
        let mut pathways: Vec<(&str, &str)> = Vec::new();
        for r in self.region_order(region) {
            if let Some(e) = self.edges.iter().find(|e| e.region == r) {
                pathways.push((e.region.as_str(), e.url.as_str()));
            }
        }
        let default = pathways.first().map(|p| p.0).unwrap_or("");
        let mut out = String::with_capacity(master.len() * (pathways.len() + 1));
        let mut lines = master.lines().peekable();
        let mut head = Vec::new();
        let mut variants: Vec<(String, String)> = Vec::new();
        let mut media: Vec<String> = Vec::new();
        while let Some(l) = lines.next() {
            if l.starts_with("#EXT-X-STREAM-INF:") {
                let uri = lines.next().unwrap_or_default().to_string();
                variants.push((l.to_string(), uri));
            } else if l.starts_with("#EXT-X-MEDIA:") {
                media.push(l.to_string());
            } else if !l.is_empty() {
                head.push(l);
            }
        }
        for l in head {
            let _ = writeln!(out, "{l}");
        }
        let _ = writeln!(
            out,
            "#EXT-X-CONTENT-STEERING:SERVER-URI=\"{server_uri}\",PATHWAY-ID=\"{default}\""
        );
        for (pathway, base) in &pathways {
            let prefix = format!("{base}/live/{stream}/");
            for m in &media {
                // each pathway's audio group is its own copy (GROUP-ID suffixed)
                let m = m
                    .replace("GROUP-ID=\"", &format!("GROUP-ID=\"{pathway}-"))
                    .replace("URI=\"", &format!("URI=\"{prefix}"));
                let _ = writeln!(out, "{m}");
            }
            for (inf, uri) in &variants {
                let inf = inf.replace("AUDIO=\"", &format!("AUDIO=\"{pathway}-"));
                let _ = writeln!(out, "{inf},PATHWAY-ID=\"{pathway}\"");
                let _ = writeln!(out, "{prefix}{uri}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn director() -> Director {
        let mut nearest = BTreeMap::new();
        nearest.insert("eu".to_string(), vec!["us".to_string()]);
        Director::new(
            &[
                "eu=http://edge-eu:8081".into(),
                "us=http://edge-us:8081".into(),
                "ap=http://edge-ap:8081/".into(),
            ],
            &nearest,
        )
        .unwrap()
    }

    #[test]
    fn own_region_then_nearest() {
        let mut d = director();
        assert_eq!(d.choose("eu", "s").unwrap().url, "http://edge-eu:8081");
        assert_eq!(d.choose("ap", "s").unwrap().url, "http://edge-ap:8081");
        d.set_health("http://edge-eu:8081", false);
        assert_eq!(
            d.choose("eu", "s").unwrap().region,
            "us",
            "nearest configured"
        );
        assert_eq!(
            d.choose("mars", "s").unwrap().region,
            "us",
            "unknown region: config order"
        );
        d.set_health("http://edge-us:8081", false);
        d.set_health("http://edge-ap:8081", false);
        assert_eq!(d.choose("eu", "s"), Err(NoEdge::AllDown));
        assert!(Director::new(&["nourl".into()], &BTreeMap::new()).is_err());
    }

    #[test]
    fn steering_manifest_and_playlist() {
        let mut d = director();
        d.set_health("http://edge-us:8081", false);
        assert_eq!(
            d.steering_manifest("eu", "/director/steering/s.json?region=eu", 10),
            r#"{"VERSION":1,"TTL":10,"RELOAD-URI":"/director/steering/s.json?region=eu","PATHWAY-PRIORITY":["eu","ap"]}"#
        );
        let master = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-MEDIA:TYPE=AUDIO,URI=\"audio/media.m3u8\",GROUP-ID=\"aac\",NAME=\"audio\"\n#EXT-X-STREAM-INF:BANDWIDTH=1000,AUDIO=\"aac\"\n360p/media.m3u8\n";
        let steered = d.steered_master(master, "s", "/director/steering/s.json", "eu");
        assert!(steered.contains("#EXT-X-CONTENT-STEERING:SERVER-URI=\"/director/steering/s.json\",PATHWAY-ID=\"eu\"\n"), "{steered}");
        assert!(steered.contains("#EXT-X-STREAM-INF:BANDWIDTH=1000,AUDIO=\"us-aac\",PATHWAY-ID=\"us\"\nhttp://edge-us:8081/live/s/360p/media.m3u8\n"), "{steered}");
        assert!(steered.contains("GROUP-ID=\"ap-aac\""), "{steered}");
        assert!(
            steered.contains("URI=\"http://edge-eu:8081/live/s/audio/media.m3u8\""),
            "{steered}"
        );
        assert_eq!(steered.matches("#EXT-X-STREAM-INF").count(), 3);
    }
}
