//! The player demo (`player-demo/`), embedded at build time so the binary serves it with no
//! files around; `origin.demo_dir` serves the same names from a directory instead (for editing).

use std::path::PathBuf;

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::Response;

use crate::http::{full, not_found, Body};

struct Asset {
    name: &'static str,
    mime: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        mime: "text/html; charset=utf-8",
        bytes: include_bytes!("../../player-demo/index.html"),
    },
    Asset {
        name: "player.js",
        mime: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../player-demo/player.js"),
    },
    Asset {
        name: "style.css",
        mime: "text/css; charset=utf-8",
        bytes: include_bytes!("../../player-demo/style.css"),
    },
    Asset {
        name: "hls.min.js",
        mime: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../player-demo/vendor/hls.min.js"),
    },
    Asset {
        name: "dash.all.min.js",
        mime: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../player-demo/vendor/dash.all.min.js"),
    },
];

/// Serves the demo files.
pub struct Demo {
    dir: Option<PathBuf>,
}

impl Demo {
    /// Embedded files, or the same names from `dir`.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Demo { dir }
    }

    /// Serve `name` (only names in the fixed asset list; `""` is `index.html`).
    pub fn serve(&self, name: &str) -> Response<Body> {
        let name = if name.is_empty() { "index.html" } else { name };
        let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
            return not_found();
        };
        let bytes = match &self.dir {
            Some(dir) => {
                let sub = if asset.name == "hls.min.js" {
                    "vendor/hls.min.js"
                } else {
                    asset.name
                };
                match std::fs::read(dir.join(sub)) {
                    Ok(b) => Bytes::from(b),
                    Err(_) => Bytes::from_static(asset.bytes),
                }
            }
            None => Bytes::from_static(asset.bytes),
        };
        let mut resp = Response::new(full(bytes));
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.mime));
        resp.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=60"),
        );
        resp
    }
}
