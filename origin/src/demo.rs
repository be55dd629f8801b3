//! The player demo (`player-demo/`), served under `/demo/` by [`tidecast_common::demo::Demo`];
//! `origin.demo_dir` serves the same names from a directory instead (for editing).

use tidecast_common::demo::{Asset, Demo};

const JS: &str = "text/javascript; charset=utf-8";

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        path: "index.html",
        mime: "text/html; charset=utf-8",
        bytes: include_bytes!("../../player-demo/index.html"),
    },
    Asset {
        name: "player.js",
        path: "player.js",
        mime: JS,
        bytes: include_bytes!("../../player-demo/player.js"),
    },
    Asset {
        name: "style.css",
        path: "style.css",
        mime: "text/css; charset=utf-8",
        bytes: include_bytes!("../../player-demo/style.css"),
    },
    Asset {
        name: "hls.min.js",
        path: "vendor/hls.min.js",
        mime: JS,
        bytes: include_bytes!("../../player-demo/vendor/hls.min.js"),
    },
    Asset {
        name: "dash.all.min.js",
        path: "vendor/dash.all.min.js",
        mime: JS,
        bytes: include_bytes!("../../player-demo/vendor/dash.all.min.js"),
    },
];

/// The player demo.
pub fn player(dir: Option<std::path::PathBuf>) -> Demo {
    Demo::new(dir, ASSETS, "index.html")
}
