//! tidecast rooms: video calls. Join tokens (JWT) in [`token`], the signaling protocol in
//! [`signal`], one room's state as a pure core in [`room`], selective-forwarding decisions (layer
//! selection, switches on keyframes, RTP continuity) as a pure core in [`forwarding`], and the shell — HTTP routes on the
//! shared service layer, WebSockets, the resume ticker — in [`server`]. When a call ends,
//! [`call_events`] is what goes on the event bus.
#![deny(missing_docs)]

pub mod bandwidth;
pub mod call_events;
pub mod client;
pub mod cluster;
pub mod forwarding;
pub mod recording;
pub mod restream;
pub mod room;
pub mod server;
pub mod sfu;
pub mod signal;
pub mod tap;
pub mod token;

pub use server::{CallEvents, Rooms, TurnHandout};
