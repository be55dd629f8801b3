//! [`LocalStore`]: objects as files under a directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::{ObjectKey, ObjectMeta, ObjectStore, StoreError, StoreFuture};

/// Objects as files under a root directory (`{root}/{key}`), written atomically.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { path, source }
}

fn not_found(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

impl LocalStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: PathBuf) -> Self {
        LocalStore { root }
    }

    fn path(&self, key: &ObjectKey) -> PathBuf {
        // ObjectKey components are validated: no `..`, no absolute paths
        key.as_str()
            .split('/')
            .fold(self.root.clone(), |p, c| p.join(c))
    }

    /// A temporary name beside `path` (`.tmp` keeps it out of listings), created directories.
    async fn temp_for(path: &Path) -> Result<PathBuf, StoreError> {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Ok(path.with_extension(format!("tmp{}-{n}", std::process::id())))
    }

    fn list_blocking(root: PathBuf, prefix: String) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut stack = vec![(root, String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if not_found(&e) => continue,
                Err(source) => return Err(StoreError::Io { path: dir, source }),
            };
            for entry in entries.flatten() {
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let key = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if is_dir {
                    if prefix.starts_with(&format!("{key}/")) || key.starts_with(&prefix) {
                        stack.push((entry.path(), key));
                    }
                } else if key.starts_with(&prefix) && !name.contains(".tmp") {
                    out.push(key);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

impl ObjectStore for LocalStore {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn put<'a>(&'a self, key: &'a ObjectKey, data: Bytes) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let path = self.path(key);
            let tmp = Self::temp_for(&path).await?;
            tokio::fs::write(&tmp, &data).await.map_err(io(&tmp))?;
            tokio::fs::rename(&tmp, &path).await.map_err(io(&path))
        })
    }

    fn put_file<'a>(&'a self, key: &'a ObjectKey, src: &'a Path) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let path = self.path(key);
            let tmp = Self::temp_for(&path).await?;
            tokio::fs::copy(src, &tmp).await.map_err(io(src))?;
            tokio::fs::rename(&tmp, &path).await.map_err(io(&path))
        })
    }

    fn get<'a>(&'a self, key: &'a ObjectKey) -> StoreFuture<'a, Option<Bytes>> {
        Box::pin(async move {
            let path = self.path(key);
            match tokio::fs::read(&path).await {
                Ok(data) => Ok(Some(Bytes::from(data))),
                Err(e) if not_found(&e) => Ok(None),
                Err(source) => Err(StoreError::Io { path, source }),
            }
        })
    }

    fn get_file<'a>(&'a self, key: &'a ObjectKey, dst: &'a Path) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let path = self.path(key);
            match tokio::fs::copy(&path, dst).await {
                Ok(_) => Ok(true),
                Err(e) if not_found(&e) && !tokio::fs::try_exists(&path).await.unwrap_or(true) => {
                    Ok(false)
                }
                Err(source) => Err(StoreError::Io { path, source }),
            }
        })
    }

    fn head<'a>(&'a self, key: &'a ObjectKey) -> StoreFuture<'a, Option<ObjectMeta>> {
        Box::pin(async move {
            let path = self.path(key);
            match tokio::fs::metadata(&path).await {
                Ok(m) if m.is_file() => Ok(Some(ObjectMeta { size: m.len() })),
                Ok(_) => Ok(None),
                Err(e) if not_found(&e) => Ok(None),
                Err(source) => Err(StoreError::Io { path, source }),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        let (root, prefix) = (self.root.clone(), prefix.to_string());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || Self::list_blocking(root, prefix))
                .await
                .map_err(|e| StoreError::Config(format!("list task: {e}")))?
        })
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let path = self.path(key);
            match tokio::fs::remove_file(&path).await {
                Err(e) if !not_found(&e) => Err(StoreError::Io { path, source: e }),
                _ => Ok(()),
            }
        })
    }
}
