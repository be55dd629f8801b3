//! GStreamer pipelines from text, the way every media shell of tidecast starts them (recorded
//! tracks, the restream, the archiver's assembly and VOD packaging): launch, find elements,
//! play, and wait for the end with the error in words. Feature `gst`.

use std::path::Path;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

/// Why a pipeline could not be built or did not finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PipelineError(pub String);

impl PipelineError {
    fn of(e: impl std::fmt::Display) -> PipelineError {
        PipelineError(e.to_string())
    }
}

/// A pipeline parsed from text, with its bus.
#[derive(Debug)]
pub struct Launched {
    /// The pipeline.
    pub pipeline: gst::Pipeline,
    /// Its bus.
    pub bus: gst::Bus,
}

/// Parse `description` (`gst-launch-1.0` syntax) into a pipeline, initialising GStreamer
/// first. Not started.
pub fn launch(description: &str) -> Result<Launched, PipelineError> {
    gst::init().map_err(PipelineError::of)?;
    let pipeline = gst::parse::launch(description)
        .map_err(PipelineError::of)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| PipelineError("not a pipeline".into()))?;
    let bus = pipeline
        .bus()
        .ok_or_else(|| PipelineError("pipeline without a bus".into()))?;
    Ok(Launched { pipeline, bus })
}

/// `path` as a quoted property value in pipeline text: refused unless it is UTF-8 without a
/// quote.
pub fn quoted_path(path: &Path) -> Result<&str, PipelineError> {
    path.to_str()
        .filter(|p| !p.contains('"'))
        .ok_or_else(|| PipelineError(format!("path {} is not plain text", path.display())))
}

impl Launched {
    /// The element named `name`, as a `T`.
    pub fn element<T: IsA<gst::Element>>(&self, name: &str) -> Result<T, PipelineError> {
        self.pipeline
            .by_name(name)
            .and_then(|e| e.downcast::<T>().ok())
            .ok_or_else(|| PipelineError(format!("no element {name}")))
    }

    /// Start it.
    pub fn play(&self) -> Result<(), PipelineError> {
        self.pipeline
            .set_state(gst::State::Playing)
            .map(|_| ())
            .map_err(PipelineError::of)
    }

    /// Block until the end of stream (Ok), an error (its message and debug text), or `timeout`.
    pub fn wait_end(&self, timeout: Duration) -> Result<(), PipelineError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PipelineError(format!(
                    "did not finish in {} s",
                    timeout.as_secs()
                )));
            }
            let wait = gst::ClockTime::from_nseconds(left.as_nanos().min(500_000_000) as u64);
            let Some(msg) = self.bus.timed_pop(wait) else {
                continue;
            };
            match msg.view() {
                gst::MessageView::Eos(_) => return Ok(()),
                gst::MessageView::Error(e) => return Err(error_text(e)),
                _ => {}
            }
        }
    }

    /// The first error on the bus, if one was posted (does not block; other messages are
    /// dropped).
    pub fn failure(&self) -> Option<PipelineError> {
        while let Some(msg) = self.bus.pop() {
            if let gst::MessageView::Error(e) = msg.view() {
                return Some(error_text(e));
            }
        }
        None
    }

    /// Stop it and free its resources.
    pub fn stop(&self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// An error message in words: what and GStreamer's debug text.
pub fn error_text(e: &gst::message::Error) -> PipelineError {
    match e.debug() {
        Some(debug) => PipelineError(format!("{} ({debug})", e.error())),
        None => PipelineError(e.error().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_runs_to_its_end_and_errors_are_said() {
        let p = launch("videotestsrc num-buffers=3 ! fakesink name=out").expect("launch");
        assert!(p.element::<gst::Element>("out").is_ok());
        assert!(p.element::<gst::Element>("missing").is_err());
        p.play().expect("play");
        assert_eq!(p.wait_end(Duration::from_secs(10)), Ok(()));
        p.stop();
        assert!(launch("nosuchelement ! fakesink").is_err());
        let bad = launch("filesrc location=/nonexistent/x ! fakesink").expect("launch");
        let _ = bad.play();
        let e = bad.wait_end(Duration::from_secs(10)).expect_err("an error");
        assert!(
            e.0.contains("/nonexistent/x") || e.0.to_lowercase().contains("not found"),
            "{e}"
        );
        bad.stop();
        assert!(quoted_path(Path::new("/a/\"b")).is_err());
        assert_eq!(quoted_path(Path::new("/a/b")), Ok("/a/b"));
    }
}
