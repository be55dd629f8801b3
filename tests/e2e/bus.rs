//! The Kafka event bus of `common::bus` against a real Kafka-protocol broker (tansu, in memory):
//! events published while Kafka is down wait in the outbox and arrive in order once it is up;
//! a consumer group gets every event again until it commits it, and nothing it committed.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tidecast_common::bus::{Event, EventBus, KafkaBus};
use tidecast_common::metrics::Registry;

use crate::harness::{free_port, require_tool};

/// tansu with in-memory storage on a loopback port.
pub struct Kafka {
    child: Option<Child>,
    port: u16,
}

impl Kafka {
    /// Start the broker and wait until it accepts connections.
    pub fn start(port: u16) -> Kafka {
        require_tool(
            "tansu",
            "cargo install tansu@0.6.0 --locked --features dynostore (infra/bootstrap.sh --test does)",
        );
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new("tansu")
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .args(["--kafka-listener-url", &url])
            .args(["--kafka-advertised-listener-url", &url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning tansu");
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Kafka {
            child: Some(child),
            port,
        }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn event(key: &str) -> Event {
    Event {
        topic: "call-events".into(),
        key: key.into(),
        payload: format!("{{\"type\":\"call.ended\",\"meeting\":\"{key}\"}}").into(),
    }
}

async fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn kafka_bus_outbox_survives_a_broker_outage_and_groups_commit() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("tidecast-kafka-bus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let brokers = format!("127.0.0.1:{port}");
    let registry = Registry::default();
    let kafka = rt.block_on(async {
        // Kafka is not there yet: events wait on disk
        let bus = KafkaBus::start(&brokers, dir.clone(), &registry).expect("kafka bus");
        for key in ["m1", "m2", "m3"] {
            bus.publish(event(key)).expect("publish");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(bus.pending(), 3);
        assert_eq!(
            std::fs::read_dir(dir.join("outbox"))
                .map(|d| d.count())
                .unwrap_or(0),
            3
        );
        drop(bus);
        outbox_delivered_after_restart(&dir, &registry, port).await
    });
    drop(kafka);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A new process (a new bus over the same outbox) forwards what the last one left once the
/// broker is up; a group reads the events in order and gets the uncommitted ones again.
async fn outbox_delivered_after_restart(dir: &Path, registry: &Registry, port: u16) -> Kafka {
    let kafka = Kafka::start(port);
    let bus = KafkaBus::start(&kafka.brokers(), dir.to_path_buf(), registry).expect("kafka bus");
    wait_for("the outbox to drain", 30, || bus.pending() == 0).await;
    bus.publish(event("m4")).expect("publish");
    wait_for("m4 to be forwarded", 15, || bus.pending() == 0).await;
    let mut consumer = bus
        .subscribe("call-events", "archiver")
        .await
        .expect("subscribe");
    let mut keys = Vec::new();
    let mut second = None;
    for _ in 0..4 {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("an event within 30 s")
            .expect("receive");
        assert!(
            std::str::from_utf8(&d.event.payload).is_ok_and(|p| p.contains("call.ended")),
            "{d:?}"
        );
        keys.push(d.event.key.clone());
        if keys.len() == 2 {
            second = Some(d);
        }
    }
    assert_eq!(keys, ["m1", "m2", "m3", "m4"]);
    let second = second.expect("two events");
    consumer.commit(&second).await.expect("commit");
    // the group's lag: the two events after its commit
    assert_eq!(consumer.lag().await.expect("lag"), 2);
    drop(consumer);
    // the group resumes after its commit: m3 and m4 again, not m1 and m2
    let mut consumer = bus
        .subscribe("call-events", "archiver")
        .await
        .expect("subscribe");
    let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .expect("an event within 30 s")
        .expect("receive");
    assert_eq!(d.event.key, "m3");
    let text = registry.render();
    assert!(
        text.contains("tidecast_bus_published_total{bus=\"kafka\"} 4"),
        "{text}"
    );
    kafka
}

/// The next delivery of `consumer` as JSON, within `secs`.
async fn next_json(
    consumer: &mut Box<dyn tidecast_common::bus::EventConsumer>,
    secs: u64,
) -> (String, serde_json::Value) {
    let d = tokio::time::timeout(Duration::from_secs(secs), consumer.next())
        .await
        .unwrap_or_else(|_| panic!("no event within {secs} s"))
        .expect("receive");
    let json = serde_json::from_slice(&d.event.payload).expect("JSON payload");
    (d.event.key, json)
}

/// What every `call.ended` of a two-bot call says.
fn check_call_ended(key: &str, json: &serde_json::Value, room: &str, reason: &str) {
    assert_eq!(json["schema"], 1, "{json}");
    assert_eq!(json["type"], "call.ended", "{json}");
    assert_eq!(json["meeting_id"], key, "{json}");
    assert_eq!(json["room"], room, "{json}");
    assert_eq!(json["reason"], reason, "{json}");
    let people = json["participants"].as_array().expect("participants");
    assert_eq!(people.len(), 2, "{json}");
    let ms = json["duration_ms"].as_u64().unwrap_or(0);
    assert!((3_000..30_000).contains(&ms), "duration {ms} ms: {json}");
}

/// A call of two bots that ends is announced as `call.ended` on Kafka (read back by an rdkafka
/// consumer group), and with the embedded defaults on the local bus.
#[test]
fn ended_calls_are_announced_on_kafka_and_on_the_local_bus() {
    use crate::harness::Tidecast;
    use crate::rooms::run_bots;
    let _guard = crate::harness::heavy();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let kafka = Kafka::start(free_port());
    let brokers = kafka.brokers();
    let t = Tidecast::start(
        &[],
        &[
            ("TIDECAST_BUS__KIND", "kafka"),
            ("TIDECAST_BUS__BROKERS", brokers.as_str()),
        ],
    );
    let room = format!("kafka-call-{}", std::process::id());
    run_bots(&t, &room, 2, 4, "0=low");
    let reader_dir = t.dir.join("reader");
    rt.block_on(async {
        let bus = KafkaBus::start(&brokers, reader_dir, &Registry::default()).expect("bus");
        let mut consumer = bus
            .subscribe("call-events", "e2e-reader")
            .await
            .expect("subscribe");
        let (key, json) = next_json(&mut consumer, 40).await;
        check_call_ended(&key, &json, &room, "empty");
    });
    let text = crate::http::get(t.http_port, "/metrics")
        .map(|r| r.text())
        .unwrap_or_default();
    assert!(
        text.contains("tidecast_call_events_published_total{bus=\"kafka\"} 1"),
        "{text}"
    );
    drop(t);
    drop(kafka);

    // embedded defaults: the local bus under the data directory
    let t = Tidecast::start(&[], &[]);
    let room = format!("local-call-{}", std::process::id());
    run_bots(&t, &room, 2, 4, "0=low");
    let bus_dir = t.dir.join("data").join("bus");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(bus_dir.join("call-events")).map_or(0, |d| d.count()) == 0 {
        assert!(
            Instant::now() < deadline,
            "no call.ended in {}\n{}",
            bus_dir.display(),
            t.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    rt.block_on(async {
        let bus = tidecast_common::bus::LocalBus::open(bus_dir);
        let mut consumer = bus
            .subscribe("call-events", "e2e-reader")
            .await
            .expect("subscribe");
        let (key, json) = next_json(&mut consumer, 5).await;
        check_call_ended(&key, &json, &room, "empty");
    });
}
