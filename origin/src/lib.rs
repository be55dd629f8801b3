//! The tidecast origin: receives CMAF renditions from ladders, keeps the live window per stream
//! and serves HLS over HTTP (hyper).
//!
//! Pure cores: [`cmaf`] (init segment reading), [`packager`] (streams, sessions, segment
//! window), [`playlist`] (HLS writers). Shell: [`server`] (HTTP routes, metrics, demo files).

pub mod cmaf;
pub mod dash;
pub mod demo;
pub mod http;
mod live_routes;
pub mod llhls;
pub mod packager;
pub mod playlist;
pub mod server;
pub mod window;

pub use packager::{StreamTable, WindowSettings};
pub use server::{Origin, OriginHandle};
