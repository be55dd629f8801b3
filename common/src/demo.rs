//! Static web pages embedded at build time (the player demo, the room client), so the binary
//! serves them with no files around. With a directory set, the same names are read from it
//! instead (for editing a page without rebuilding). Only names in the fixed list are served:
//! a request path never becomes a file path.

use std::path::PathBuf;

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::body::{full, Body};

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// URL name under `/demo/`.
    pub name: &'static str,
    /// Path under the directory, when one is set.
    pub path: &'static str,
    /// `Content-Type`.
    pub mime: &'static str,
    /// The embedded bytes.
    pub bytes: &'static [u8],
}

/// Serves a fixed list of assets.
#[derive(Debug)]
pub struct Demo {
    dir: Option<PathBuf>,
    assets: &'static [Asset],
    index: &'static str,
}

impl Demo {
    /// `assets` (embedded, or read from `dir`); `""` is `index`.
    pub fn new(dir: Option<PathBuf>, assets: &'static [Asset], index: &'static str) -> Self {
        Demo { dir, assets, index }
    }

    /// Serve `name`.
    pub fn serve(&self, name: &str) -> Response<Body> {
        let name = if name.is_empty() { self.index } else { name };
        let Some(asset) = self.assets.iter().find(|a| a.name == name) else {
            let mut resp = Response::new(full("not found\n"));
            *resp.status_mut() = StatusCode::NOT_FOUND;
            return resp;
        };
        let bytes = self
            .dir
            .as_ref()
            .and_then(|dir| std::fs::read(dir.join(asset.path)).ok())
            .map(Bytes::from)
            .unwrap_or_else(|| Bytes::from_static(asset.bytes));
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
