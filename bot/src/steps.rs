//! A run's schedule of subscription steps (`--schedule`) and the packets each received track
//! got in each step, counted from when a switch has settled.

use std::time::{Duration, Instant};

use crate::participant::{lock, Counts, ParticipantReport, Stats};

/// Packets counted per schedule step start this long after the step began.
const SETTLE: Duration = Duration::from_millis(1500);

/// The schedule's steps and the packets received in each (counted from `SETTLE` after a step
/// began, when a switch has settled, to its end).
pub(crate) struct Steps {
    schedule: Vec<(Duration, String)>,
    started: Instant,
    step: usize,
    settled: Vec<Option<Counts>>,
    ended: Vec<Counts>,
}

fn counts(stats: &Stats) -> Counts {
    lock(stats)
        .iter()
        .map(|(k, s)| (k.clone(), s.report(Instant::now()).packets))
        .collect()
}

impl Steps {
    pub(crate) fn new(schedule: &[(Duration, String)], started: Instant) -> Steps {
        Steps {
            schedule: schedule.to_vec(),
            started,
            step: 0,
            settled: vec![None],
            ended: Vec::new(),
        }
    }

    /// The layer the current step asks for.
    pub(crate) fn layer(&self) -> String {
        self.schedule
            .get(self.step)
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| "low".into())
    }

    /// Called every tick: the new step's layer when one began.
    pub(crate) fn tick(&mut self, stats: &Stats, now: Instant) -> Option<String> {
        let began = self
            .schedule
            .get(self.step)
            .map(|(at, _)| self.started + *at);
        if let (Some(slot), Some(began)) = (self.settled.last_mut(), began) {
            if slot.is_none() && now >= began + SETTLE {
                *slot = Some(counts(stats));
            }
        }
        let (at, layer) = self.schedule.get(self.step + 1)?;
        if self.started + *at > now {
            return None;
        }
        self.step += 1;
        self.ended.push(counts(stats));
        self.settled.push(None);
        Some(layer.clone())
    }

    /// The end: tracks' reports (with `rtt`) and packets per step into `report`.
    pub(crate) fn finish(
        mut self,
        stats: &Stats,
        rtt: Option<f64>,
        ws_open_ms: u64,
        report: &mut ParticipantReport,
    ) {
        let now = Instant::now();
        self.ended.push(counts(stats));
        report.join_ms = lock(stats)
            .values()
            .filter_map(|s| {
                let r = s.report(now);
                (r.kind == "video").then_some(r.first_frame_ms).flatten()
            })
            .min()
            .map(|first| first.saturating_sub(ws_open_ms));
        for (key, s) in lock(stats).iter_mut() {
            if let Some(ms) = rtt {
                s.rtt(ms);
            }
            report.tracks.push(s.report(now));
            let at = |c: &Counts| c.get(key).copied().unwrap_or(0);
            let per_step = self
                .settled
                .iter()
                .zip(&self.ended)
                .enumerate()
                .map(|(i, (from, to))| {
                    // a step too short to settle counts from its start
                    let from = match from {
                        Some(c) => at(c),
                        None => i.checked_sub(1).map(|p| at(&self.ended[p])).unwrap_or(0),
                    };
                    at(to).saturating_sub(from)
                })
                .collect();
            report
                .packets_by_step
                .insert(format!("{}/{}", key.0, key.1), per_step);
        }
    }
}
