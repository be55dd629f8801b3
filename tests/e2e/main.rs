//! End-to-end tests: the real `tidecast` binary, published to by ffmpeg the way OBS does, played
//! by ffprobe and hls.js in Chromium. `make test` installs the tools and builds the binary first.

mod harness;
mod http;

mod archive;
mod bad_input;
mod browser;
mod bus;
mod dash;
mod deploy;
mod edge;
mod lab;
mod live_spine;
mod ll_hls;
mod nat;
mod recording;
mod restream;
mod rooms;
mod split;
mod turn;
