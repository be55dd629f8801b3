//! Shared pieces of tidecast: configuration (TOML + `TIDECAST_…` env overrides), the live media
//! events that flow from ingest to origin, stream-key checks and a small Prometheus registry.
#![deny(missing_docs)]

pub mod body;
pub mod bus;
pub mod config;
pub mod demo;
pub mod http_server;
pub mod keys;
pub mod lifecycle;
pub mod live;
pub mod metrics;
pub mod net;
pub mod own_thread;
#[cfg(feature = "gst")]
pub mod pipeline;
pub mod push;
pub mod rendezvous;
pub mod service;
pub mod spool;
pub mod store;
pub mod time;
pub mod token;
pub mod udp_batch;
pub mod zero_copy;

pub use config::{Config, ConfigError};
pub use live::{CmafChunk, LiveEvent, RenditionInfo, TrackKind};
pub use store::{ObjectKey, ObjectStore, SharedStore, StoreError};
