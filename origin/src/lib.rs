//! The tidecast origin: receives CMAF renditions from ladders, keeps the live window per stream
//! and serves HLS over HTTP (hyper).
//!
//! Pure cores: [`cmaf`] (init segment reading), [`packager`] (streams, sessions, segment
//! window), [`playlist`] (HLS writers), [`dash`] (MPD writer), [`llhls`] (blocking-reload rules),
//! [`archive`] (what to write to the object store). Shells: [`server`] (HTTP routes, metrics,
//! demo files), [`archiver`] (ordered object-store writes with a disk spool).

pub mod archive;
pub mod archiver;
pub mod cmaf;
pub mod dash;
pub mod demo;
pub mod http;
mod live_routes;
pub mod llhls;
pub mod packager;
pub mod playlist;
pub mod server;
mod vod_routes;
pub mod window;

pub use packager::{StreamTable, WindowSettings};
pub use server::{Origin, OriginHandle};
