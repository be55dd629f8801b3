//! Configuration: one TOML file, every key overridable by `TIDECAST_SECTION__KEY=value` env vars.
//!
//! Defaults are embedded, so `tidecast` with no file runs everything with open publishing.

use std::path::PathBuf;

use serde::Deserialize;

mod calls;
pub mod check;
mod storage;
mod streaming;

pub use calls::{RoomsConfig, TurnConfig};
pub use check::Problem;
pub use storage::{ArchiverConfig, BusConfig, BusKind, S3Config, StoreConfig, StoreKind};
pub use streaming::{
    part_target, EdgeConfig, IngestConfig, LadderConfig, OriginConfig, RungConfig,
};

/// Errors reading or merging configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The TOML (file or merged env) did not parse or did not fit the schema.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where local data (object store, spool) lives.
    pub data_dir: PathBuf,
    /// Listen backlog of every TCP listener (RTMP, origin, edge): connects a burst may queue
    /// before they are accepted. The kernel caps it at `net.core.somaxconn`.
    pub listen_backlog: u32,
    /// On SIGTERM, seconds the HTTP listeners keep accepting after `/readyz` turned 503 (so
    /// load balancers and Kubernetes endpoints stop sending new work first).
    pub drain_delay_secs: u64,
    /// On SIGTERM, the most seconds the drain waits for work under way (streams ending,
    /// responses, archiver jobs) before the process exits anyway.
    pub drain_timeout_secs: u64,
    /// RTMP ingest.
    pub ingest: IngestConfig,
    /// Transcode ladder.
    pub ladder: LadderConfig,
    /// Origin HTTP server and packager.
    pub origin: OriginConfig,
    /// Object store for archives (local directory or S3).
    pub store: StoreConfig,
    /// Caching edge / shield.
    pub edge: EdgeConfig,
    /// Rooms: WebSocket signaling and calls.
    pub rooms: RoomsConfig,
    /// STUN/TURN for the rooms' clients.
    pub turn: TurnConfig,
    /// Event bus (call events for the archiver).
    pub bus: BusConfig,
    /// The archiver (`tidecast archiver`, part of `tidecast all`).
    pub archiver: ArchiverConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            listen_backlog: crate::http_server::DEFAULT_LISTEN_BACKLOG,
            drain_delay_secs: 0,
            drain_timeout_secs: 25,
            ingest: IngestConfig::default(),
            ladder: LadderConfig::default(),
            origin: OriginConfig::default(),
            store: StoreConfig::default(),
            edge: EdgeConfig::default(),
            rooms: RoomsConfig::default(),
            turn: TurnConfig::default(),
            bus: BusConfig::default(),
            archiver: ArchiverConfig::default(),
        }
    }
}

impl Config {
    /// Parse TOML text (missing keys take defaults).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let value: toml::Value =
            toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Self::from_value(value)
    }

    fn from_value(value: toml::Value) -> Result<Self, ConfigError> {
        value
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))
    }

    /// Load: optional file, then env overrides from `vars` (pass `std::env::vars()`).
    pub fn load(
        path: Option<&std::path::Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        let mut value: toml::Value =
            toml::from_str(&text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        for (name, raw) in vars {
            let Some(rest) = name.strip_prefix("TIDECAST_") else {
                continue;
            };
            // a name without a section is an override only for a top-level key; the rest
            // (TIDECAST_CONFIG for --config, TIDECAST_BIN for the tests, …) are not config
            if rest.contains("__") || TOP_LEVEL_KEYS.contains(&rest.to_ascii_lowercase().as_str()) {
                apply_env_override(&mut value, rest, &raw)?;
            }
        }
        Self::from_value(value)
    }
}

/// The keys of [`Config`] outside any section (`TIDECAST_DATA_DIR`, `TIDECAST_LISTEN_BACKLOG`).
const TOP_LEVEL_KEYS: [&str; 4] = [
    "data_dir",
    "listen_backlog",
    "drain_delay_secs",
    "drain_timeout_secs",
];

/// `INGEST__RTMP_LISTEN=…` sets `ingest.rtmp_listen`. Path parts are lower-cased except map keys
/// under `keys` (stream keys are case-sensitive). Values parse as TOML scalars/arrays when they
/// can (`2000`, `true`, `["a"]`) and are strings otherwise.
fn apply_env_override(root: &mut toml::Value, path: &str, raw: &str) -> Result<(), ConfigError> {
    let mut parts: Vec<String> = Vec::new();
    for part in path.split("__") {
        if part.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "env override TIDECAST_{path}: empty path component"
            )));
        }
        let keep_case = parts.last().map(|p| p == "keys").unwrap_or(false);
        parts.push(if keep_case {
            part.to_string()
        } else {
            part.to_ascii_lowercase()
        });
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut cur = root;
    let (last, dirs) = parts
        .split_last()
        .ok_or_else(|| ConfigError::Invalid("empty env override".into()))?;
    for dir in dirs {
        let table = cur
            .as_table_mut()
            .ok_or_else(|| ConfigError::Invalid(format!("TIDECAST_{path}: not a table")))?;
        cur = table
            .entry(dir.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    let table = cur
        .as_table_mut()
        .ok_or_else(|| ConfigError::Invalid(format!("TIDECAST_{path}: not a table")))?;
    table.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_target_bounds_two_frames_over() {
        let ms = std::time::Duration::from_millis;
        // 400 ms at 30 fps: 12 frames, 13 with a late keyframe (0.433 s)
        assert_eq!(part_target(ms(400)), ms(484));
        // 24 fps: 10 frames = 0.4167 s, up to 11 (0.4583 s)
        assert!(part_target(ms(400)) >= std::time::Duration::from_micros(458_334));
        assert_eq!(part_target(ms(1000)), ms(1100));
        assert_eq!(part_target(ms(250)), ms(334));
    }

    #[test]
    fn defaults_without_file() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.ladder.rungs.len(), 5);
    }

    #[test]
    fn env_overrides_nested_keys() {
        let vars = vec![
            (
                "TIDECAST_ORIGIN__HTTP_LISTEN".into(),
                "127.0.0.1:9000".into(),
            ),
            ("TIDECAST_LADDER__SEGMENT_MS".into(), "1000".into()),
            ("TIDECAST_INGEST__KEYS__AbC".into(), "main".into()),
            ("OTHER".into(), "x".into()),
            ("TIDECAST_DATA_DIR".into(), "/srv/tidecast".into()),
            ("TIDECAST_LISTEN_BACKLOG".into(), "8192".into()),
            // not config keys: --config's env var, the test harness's binary path
            ("TIDECAST_CONFIG".into(), "/etc/tidecast.toml".into()),
            ("TIDECAST_BIN".into(), "/usr/bin/tidecast".into()),
        ];
        let c = Config::load(None, vars).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/tidecast"));
        assert_eq!(c.listen_backlog, 8192);
        assert_eq!(c.origin.http_listen, "127.0.0.1:9000");
        assert_eq!(c.ladder.segment_ms, 1000);
        assert_eq!(c.ingest.keys.get("AbC").map(String::as_str), Some("main"));
    }

    #[test]
    fn parts_divide_segments() {
        let ladder = |segment_ms, part_ms| LadderConfig {
            segment_ms,
            part_ms,
            ..LadderConfig::default()
        };
        let ms = |v: u64| Some(std::time::Duration::from_millis(v));
        assert_eq!(LadderConfig::default().part(), ms(250));
        assert_eq!(ladder(2000, 333).part(), ms(400));
        assert_eq!(ladder(2000, 500).part(), ms(500));
        assert_eq!(ladder(2000, 300).part(), ms(250));
        assert_eq!(ladder(6000, 1000).part(), ms(1000));
        assert_eq!(ladder(2000, 10).part(), ms(50));
        assert_eq!(ladder(2000, 0).part(), None);
        let passthrough = LadderConfig {
            passthrough: true,
            ..LadderConfig::default()
        };
        assert_eq!(passthrough.part(), ms(400));
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(Config::from_toml("[origin]\nhttp_lsten = 'x'").is_err());
        let typo = vec![("TIDECAST_ORIGN__HTTP_LISTEN".to_string(), "x".to_string())];
        assert!(
            Config::load(None, typo).is_err(),
            "a misspelt section is reported"
        );
        let c = Config::from_toml("[[ladder.rungs]]\nname='a'\nheight=100\nvideo_kbps=10").unwrap();
        assert_eq!(c.ladder.rungs.len(), 1);
    }
}
