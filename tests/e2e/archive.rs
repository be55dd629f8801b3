//! Archive to S3 (a real S3 API server, s3s-fs, over a temp directory): a finished stream plays
//! as VOD from `/vod/…`, every segment is in the bucket, and a 20 s S3 outage during the stream
//! loses nothing once S3 is back (the origin spools to disk and retries).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{as_env, free_port, heavy, require_tool, Publisher, Tidecast};

pub const BUCKET: &str = "tidecast";
pub const ACCESS: &str = "AKIDTIDECASTTEST";
pub const SECRET: &str = "tidecast-test-secret-key";

/// s3s-fs serving `root` (buckets are its subdirectories) on a loopback port.
pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
    root: PathBuf,
}

impl S3Server {
    pub fn start(root: &Path, port: u16) -> S3Server {
        require_tool(
            "s3s-fs",
            "cargo install s3s-fs@0.14.1 --locked --features binary",
        );
        std::fs::create_dir_all(root.join(BUCKET)).expect("bucket dir");
        let mut s = S3Server {
            child: None,
            port,
            root: root.to_path_buf(),
        };
        s.restart();
        s
    }

    pub fn restart(&mut self) {
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS, "--secret-key", SECRET])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning s3s-fs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The environment that points a tidecast at this server (store retries every second).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TIDECAST_STORE__KIND", "s3".into()),
            (
                "TIDECAST_STORE__S3__ENDPOINT",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("TIDECAST_STORE__S3__BUCKET", BUCKET.into()),
            ("TIDECAST_STORE__S3__ACCESS_KEY_ID", ACCESS.into()),
            ("TIDECAST_STORE__S3__SECRET_ACCESS_KEY", SECRET.into()),
            ("TIDECAST_ORIGIN__ARCHIVE_RETRY_SECS", "1".into()),
        ]
    }

    /// The bucket's directory (objects are files under it).
    pub fn bucket_dir(&self) -> PathBuf {
        self.root.join(BUCKET)
    }

    fn object(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.bucket_dir().join(key)).ok()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn metric(t: &Tidecast, name: &str) -> i64 {
    Tidecast::metric(t.http_port, name, "")
}

#[test]
fn s3_archive_survives_an_outage_and_plays_as_vod() {
    require_tool("ffprobe", "apt-get install ffmpeg");
    let _guard = heavy();
    let root = std::env::temp_dir().join(format!("tidecast-s3-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut s3 = S3Server::start(&root, free_port());
    let t = Tidecast::start(&[], &as_env(&s3.env()));
    let publisher = Publisher::start(&t.rtmp_url("arch"), 40, "640x360");
    t.wait_master("arch");
    let sessions_dir = root.join(BUCKET).join("vod/arch");
    let session = t.wait_for(
        "the first segment in the bucket",
        Duration::from_secs(20),
        || {
            let entry = std::fs::read_dir(&sessions_dir).ok()?.flatten().next()?;
            let name = entry.file_name().to_str()?.to_string();
            entry.path().join("360p/1.m4s").exists().then_some(name)
        },
    );

    // S3 goes away for 20 s in the middle of the stream
    s3.stop();
    let down = Instant::now();
    t.wait_for("writes to be spooled", Duration::from_secs(10), || {
        (metric(&t, "tidecast_store_spooled_objects") > 0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(20).saturating_sub(down.elapsed()));
    let spooled = metric(&t, "tidecast_store_spooled_objects");
    eprintln!(
        "S3 down for {:?}: {spooled} objects spooled",
        down.elapsed()
    );
    assert!(
        spooled >= 10,
        "a 20 s outage spools many objects, got {spooled}"
    );
    s3.restart();

    let (ok, err) = publisher.wait(Duration::from_secs(60));
    assert!(ok, "ffmpeg: {err}");
    let prefix = format!("vod/arch/{session}");
    t.wait_for(
        "the session to be archived",
        Duration::from_secs(60),
        || {
            let done = s3.object(&format!("{prefix}/session.json")).is_some()
                && metric(&t, "tidecast_store_spooled_objects") == 0;
            done.then_some(())
        },
    );
    assert!(metric(&t, "tidecast_store_write_failures_total") > 0);

    // every segment of every rendition is in the bucket, byte for byte what /vod serves
    let master = t.get(&format!("/vod/arch/{session}/master.m3u8"));
    assert_eq!(master.status, 200);
    let master = m3u8_rs::parse_master_playlist_res(&master.body).expect("VOD master parses");
    let mut uris: Vec<String> = master.variants.iter().map(|v| v.uri.clone()).collect();
    uris.extend(master.alternatives.iter().filter_map(|a| a.uri.clone()));
    assert_eq!(uris.len(), 3, "360p, 240p, audio: {uris:?}");
    for uri in &uris {
        let rendition = uri.trim_end_matches("/media.m3u8");
        let text = t.get(&format!("/vod/arch/{session}/{uri}")).body;
        let playlist = m3u8_rs::parse_media_playlist_res(&text).expect("VOD playlist parses");
        assert!(playlist.end_list, "{rendition}: ENDLIST");
        let total: f32 = playlist.segments.iter().map(|s| s.duration).sum();
        assert!(total > 37.0, "{rendition}: {total}s archived of 40 s");
        let msns: Vec<u64> = playlist
            .segments
            .iter()
            .filter_map(|s| s.uri.trim_end_matches(".m4s").parse().ok())
            .collect();
        let expected: Vec<u64> = (0..msns.len() as u64).collect();
        assert_eq!(msns, expected, "{rendition}: contiguous from 0");
        for s in &playlist.segments {
            let in_bucket = s3
                .object(&format!("{prefix}/{rendition}/{}", s.uri))
                .unwrap_or_else(|| panic!("{rendition}/{} missing from the bucket", s.uri));
            let served = t.get(&format!("/vod/arch/{session}/{rendition}/{}", s.uri));
            assert_eq!(served.status, 200);
            assert_eq!(served.body, in_bucket, "{rendition}/{}", s.uri);
        }
        assert!(s3
            .object(&format!("{prefix}/{rendition}/init.mp4"))
            .is_some());
    }
    assert!(s3.object(&format!("{prefix}/manifest.mpd")).is_some());

    // the VOD plays: ffmpeg decodes all of it without an error, HLS and DASH
    for file in ["master.m3u8", "manifest.mpd"] {
        let url = format!("http://127.0.0.1:{}/vod/arch/{session}/{file}", t.http_port);
        let out = Command::new("ffmpeg")
            .args([
                "-v", "error", "-xerror", "-i", &url, "-map", "0", "-f", "null", "-",
            ])
            .output()
            .expect("running ffmpeg");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "{file}: {err}"
        );
        let duration = crate::harness::ffprobe_duration(&url);
        assert!(duration > 37.0, "{file}: {duration}s");
    }
    // paths never reach the store unchecked
    assert_eq!(t.get("/vod/arch/..%2F..%2Fetc/master.m3u8").status, 404);
    assert_eq!(
        t.get(&format!("/vod/arch/{session}/360p/x.txt")).status,
        404
    );
}

/// The S3 backend of `common::store` against s3s-fs: a file larger than the multipart threshold
/// goes up in parts and comes back byte for byte, head/list/delete, and errors say whether
/// retrying can help (a refused signature: no; S3 unreachable: yes).
#[test]
fn s3_store_streams_large_files_as_multipart_uploads() {
    use tidecast_common::config::{S3Config, StoreConfig, StoreKind};
    use tidecast_common::store::{ObjectMeta, ObjectStore, S3Store, MULTIPART_THRESHOLD};
    use tidecast_common::ObjectKey;

    let root = std::env::temp_dir().join(format!("tidecast-s3store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut s3 = S3Server::start(&root, free_port());
    let config = |secret: &str| StoreConfig {
        kind: StoreKind::S3,
        local_dir: None,
        s3: S3Config {
            endpoint: format!("http://127.0.0.1:{}", s3.port),
            region: "us-east-1".into(),
            bucket: BUCKET.into(),
            prefix: "pre".into(),
            path_style: true,
            access_key_id: ACCESS.into(),
            secret_access_key: secret.into(),
        },
    };
    let store = S3Store::new(&config(SECRET)).expect("s3 store");
    let forged = S3Store::new(&config("not-the-secret")).expect("s3 store");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let big = root.join("big.bin");
    let size = MULTIPART_THRESHOLD as usize + 5 * 1024 * 1024 + 123;
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    std::fs::write(&big, &data).expect("writing the test file");
    let key = ObjectKey::new("recordings/m1/recording.mp4").expect("key");
    rt.block_on(async {
        store.put_file(&key, &big).await.expect("multipart upload");
        assert_eq!(
            store.head(&key).await.expect("head"),
            Some(ObjectMeta { size: size as u64 })
        );
        let back = root.join("back.bin");
        assert!(store.get_file(&key, &back).await.expect("get_file"));
        assert!(
            std::fs::read(&back).expect("read back") == data,
            "bytes differ"
        );
        let small = ObjectKey::new("recordings/m1/manifest.json").expect("key");
        store
            .put(&small, bytes::Bytes::from_static(b"{}"))
            .await
            .expect("put");
        assert_eq!(
            store.list("recordings/m1/").await.expect("list"),
            vec![
                "recordings/m1/manifest.json".to_string(),
                "recordings/m1/recording.mp4".to_string()
            ]
        );
        store.delete(&key).await.expect("delete");
        assert_eq!(store.head(&key).await.expect("head"), None);
        assert!(!store.get_file(&key, &back).await.expect("get_file"));
        let refused = forged.put(&small, bytes::Bytes::new()).await;
        let err = refused.expect_err("a bad signature is refused");
        assert!(!err.is_retryable(), "{err}");
    });
    // no part or temporary file left beside the objects
    let left: Vec<_> = std::fs::read_dir(root.join(BUCKET).join("pre/recordings/m1"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert_eq!(left.len(), 1, "{left:?}");
    s3.stop();
    rt.block_on(async {
        let small = ObjectKey::new("x/y").expect("key");
        let err = store
            .put(&small, bytes::Bytes::new())
            .await
            .expect_err("S3 is down");
        assert!(err.is_retryable(), "{err}");
    });
}
