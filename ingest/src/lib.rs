//! tidecast ingest: an RTMP server (rml_rtmp) that accepts publishers the way OBS pushes, and the
//! GStreamer ladder that turns each published stream into CMAF renditions for the origin.
//!
//! Pure cores: [`chunk_guard`] (the RTMP chunk stream and AMF0 checked before rml_rtmp sees
//! them), [`rtmp_input`] (bytes → guard → rml_rtmp session, what the fuzz targets drive),
//! [`flv`] (FLV tags, AVC decoder configuration and SPS parsing), [`ladder_plan`] (which rungs
//! a source gets), [`segmenting`] (where keyframes, segments and parts are cut), [`publishers`]
//! (who owns a stream name). Shells: [`server`] (sockets, one task per connection) and
//! [`ladder`] (the GStreamer pipeline per session) and [`ladder_output`] (its muxers and appsinks:
//! samples → the origin's events).

pub mod chunk_guard;
pub mod error;
pub mod flv;
pub mod ladder;
pub mod ladder_output;
pub mod ladder_plan;
pub mod media_gate;
pub mod publishers;
pub mod push;
pub mod rtmp_input;
pub mod segmenting;
pub mod server;

pub use error::IngestError;
pub use server::{IngestMetrics, IngestServer};
