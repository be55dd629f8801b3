//! One lifecycle for every role: SIGTERM (or ctrl-c) → readiness false → drain → exit.
//!
//! [`Readiness`] is shared by the roles of one process. [`Readiness::drain`] clears it (so
//! `/readyz` answers 503 and load balancers stop sending new work) and tells every role to
//! finish what it has: HTTP servers stop accepting after [`Drain::delay`] and let in-flight
//! requests end, ingest ends its streams (their playlists get `#EXT-X-ENDLIST`), rooms tell
//! participants to reconnect elsewhere, the archiver stops between jobs. Each role registers
//! its work with [`Readiness::track`]; [`Readiness::drained`] resolves when all of it is done.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

#[derive(Debug)]
struct Inner {
    ready: AtomicBool,
    /// true once draining
    drain: watch::Sender<bool>,
    /// how long HTTP listeners keep accepting after the drain starts
    delay: std::sync::Mutex<Duration>,
    /// work still under way: one receiver per [`Work`] alive
    work: watch::Sender<()>,
}

/// Whether this node takes new work (`/readyz`), and the drain every role follows. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<Inner>);

impl Default for Readiness {
    fn default() -> Readiness {
        Readiness(Arc::new(Inner {
            ready: AtomicBool::new(true),
            drain: watch::channel(false).0,
            delay: std::sync::Mutex::new(Duration::ZERO),
            work: watch::channel(()).0,
        }))
    }
}

impl Readiness {
    /// Ready or not.
    pub fn set(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::Relaxed);
    }

    /// Currently ready.
    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::Relaxed) && !self.is_draining()
    }

    /// How long HTTP listeners keep accepting once draining (load balancers notice `/readyz`
    /// in that time).
    pub fn set_drain_delay(&self, delay: Duration) {
        if let Ok(mut d) = self.0.delay.lock() {
            *d = delay;
        }
    }

    /// Start draining: not ready any more, and every [`Drain`] fires.
    pub fn drain(&self) {
        self.0.ready.store(false, Ordering::Relaxed);
        self.0.drain.send_replace(true);
    }

    /// Draining already.
    pub fn is_draining(&self) -> bool {
        *self.0.drain.borrow()
    }

    /// The signal a role's loop waits on.
    pub fn drain_signal(&self) -> Drain {
        let delay = self.0.delay.lock().map(|d| *d).unwrap_or_default();
        Drain {
            rx: self.0.drain.subscribe(),
            delay,
        }
    }

    /// Register work the drain waits for; it is done when the returned guard drops.
    pub fn track(&self) -> Work {
        Work(self.0.work.subscribe())
    }

    /// Resolves when every [`Work`] has been dropped, or after `timeout` (false then).
    pub async fn drained(&self, timeout: Duration) -> bool {
        let tx = &self.0.work;
        tokio::time::timeout(timeout, tx.closed()).await.is_ok() || tx.receiver_count() == 0
    }

    /// Work still under way.
    pub fn work_in_progress(&self) -> usize {
        self.0.work.receiver_count()
    }
}

/// Work the drain waits for (see [`Readiness::track`]).
#[derive(Debug)]
pub struct Work(#[allow(dead_code)] watch::Receiver<()>);

/// The live sessions a consumer of [`crate::LiveEvent`]s (the origin, an ingest's push to a
/// remote origin) holds work for: from `SessionStarted` until its `SessionEnded` is handled,
/// so a draining process waits for every stream's end to be through.
#[derive(Debug)]
pub struct SessionWork {
    readiness: Readiness,
    live: std::collections::HashMap<(String, u64), Work>,
}

impl SessionWork {
    /// Sessions tracked against `readiness`.
    pub fn new(readiness: &Readiness) -> SessionWork {
        SessionWork {
            readiness: readiness.clone(),
            live: Default::default(),
        }
    }

    /// Note an event before handling it; drop what this returns once it is handled.
    pub fn on_event(&mut self, event: &crate::LiveEvent) -> Option<Work> {
        match event {
            crate::LiveEvent::SessionStarted {
                stream, session, ..
            } => {
                let work = self.readiness.track();
                self.live.insert((stream.clone(), *session), work)
            }
            crate::LiveEvent::SessionEnded { stream, session } => {
                self.live.remove(&(stream.clone(), *session))
            }
            _ => None,
        }
    }
}

/// A role's view of the drain.
#[derive(Debug, Clone)]
pub struct Drain {
    rx: watch::Receiver<bool>,
    /// How long HTTP listeners keep accepting once the drain started.
    pub delay: Duration,
}

impl Drain {
    /// Resolves once draining (at once if it already is). A drain signal whose
    /// [`Readiness`] is gone never fires.
    pub async fn started(&mut self) {
        if self.rx.wait_for(|d| *d).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Draining already.
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }
}

/// Resolves on SIGTERM or SIGINT (ctrl-c) with the signal's name.
pub async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "SIGINT"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn draining_clears_readiness_fires_the_signal_and_waits_for_work() {
        let r = Readiness::default();
        let mut signal = r.drain_signal();
        assert!(r.is_ready() && !signal.is_draining());
        let work = r.track();
        let other = r.track();
        r.drain();
        assert!(!r.is_ready());
        signal.started().await;
        assert!(signal.is_draining());
        assert!(
            !r.drained(Duration::from_millis(20)).await,
            "work under way"
        );
        assert_eq!(r.work_in_progress(), 2);
        drop(work);
        let waiter = tokio::spawn({
            let r = r.clone();
            async move { r.drained(Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(other);
        assert!(
            waiter.await.unwrap_or(false),
            "drained once the work is done"
        );
        // a signal taken after the drain started fires at once
        r.drain_signal().started().await;
    }

    #[test]
    fn a_live_session_is_work_until_its_end_is_handled() {
        let r = Readiness::default();
        let mut sessions = SessionWork::new(&r);
        let started = crate::LiveEvent::SessionStarted {
            stream: "main".into(),
            session: 1,
            renditions: vec![],
            started_at: std::time::SystemTime::UNIX_EPOCH,
        };
        assert!(sessions.on_event(&started).is_none());
        assert_eq!(r.work_in_progress(), 1);
        let end = sessions.on_event(&crate::LiveEvent::SessionEnded {
            stream: "main".into(),
            session: 1,
        });
        assert_eq!(r.work_in_progress(), 1, "until the end is handled");
        drop(end);
        assert_eq!(r.work_in_progress(), 0);
    }
}
