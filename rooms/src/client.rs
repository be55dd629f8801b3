//! The room client (`player-demo/room.html`), served by the rooms node under `/demo/` so the page
//! and its signaling share one origin: `http://HOST:7880/demo/room.html?room=NAME`.

use tidecast_common::demo::{Asset, Demo};

const ASSETS: &[Asset] = &[
    Asset {
        name: "room.html",
        path: "room.html",
        mime: "text/html; charset=utf-8",
        bytes: include_bytes!("../../player-demo/room.html"),
    },
    Asset {
        name: "room.js",
        path: "room.js",
        mime: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../player-demo/room.js"),
    },
    Asset {
        name: "style.css",
        path: "style.css",
        mime: "text/css; charset=utf-8",
        bytes: include_bytes!("../../player-demo/style.css"),
    },
];

/// The room client pages.
pub fn pages() -> Demo {
    Demo::new(None, ASSETS, "room.html")
}
