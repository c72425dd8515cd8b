//! The simulator: `devices` × `sensors` series at `rate` readings per second
//! each, following a waveform. For the demo and for benchmarks.
//!
//! Series: `<quantity>{device="sim-0001",sensor="s0"}` where the quantity
//! cycles through temperature, humidity, pressure and voltage. Values have
//! two decimals, as real sensors report them.

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::batch::Reading;
use ferry_proto::series::SeriesKey;
use serde::Deserialize;
use tokio::sync::watch;

use crate::intake::{Intake, Refused, SubmitError};
use crate::journal::{SeriesReadings, Work};
use crate::metrics::Counter;
use ferry_clock::{Clock, SystemClock, until};

/// `[[simulator]]` in agent.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Name, for logs.
    pub name: String,
    /// Simulated devices.
    pub devices: usize,
    /// Sensors per device.
    pub sensors: usize,
    /// Readings per second per sensor.
    pub rate: f64,
    /// `sine`, `triangle` or `walk`.
    pub waveform: Waveform,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            name: "sim".into(),
            devices: 4,
            sensors: 2,
            rate: 1.0,
            waveform: Waveform::Sine,
        }
    }
}

/// Shapes of simulated signals.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Waveform {
    /// A sine with a period of 10 minutes.
    Sine,
    /// A triangle with a period of 10 minutes.
    Triangle,
    /// A bounded random walk.
    Walk,
}

const QUANTITIES: [(&str, f64, f64); 4] = [
    ("temperature", 21.0, 4.0),
    ("humidity", 45.0, 10.0),
    ("pressure", 1013.0, 6.0),
    ("voltage", 3.3, 0.1),
];

/// The value of a series at time `t_s` (seconds), two decimals.
pub fn value(waveform: Waveform, device: usize, sensor: usize, t_s: f64, walk: &mut f64) -> f64 {
    let (_, base, amp) = QUANTITIES[sensor % QUANTITIES.len()];
    let phase = device as f64 * 0.7 + sensor as f64 * 1.3;
    let x = t_s / 600.0 * std::f64::consts::TAU + phase;
    let v = match waveform {
        // The libm crate's sine, not the C library's: see `pow` in main.rs.
        Waveform::Sine => base + amp * libm::sin(x),
        Waveform::Triangle => {
            let f = (x / std::f64::consts::TAU).fract();
            base + amp * (4.0 * (f - 0.5).abs() - 1.0)
        }
        Waveform::Walk => {
            // Deterministic pseudo-random step from the time.
            let h = ((t_s * 1000.0) as u64 ^ (device as u64) << 32 ^ sensor as u64)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let step = ((h >> 40) as f64 / (1u64 << 24) as f64 - 0.5) * amp * 0.05;
            *walk = (*walk + step).clamp(-amp, amp);
            base + *walk
        }
    };
    (v * 100.0).round() / 100.0
}

/// The series key of a simulated sensor.
pub fn series(device: usize, sensor: usize) -> SeriesKey {
    let (q, _, _) = QUANTITIES[sensor % QUANTITIES.len()];
    SeriesKey::new(
        q,
        [
            ("device", format!("sim-{device:04}")),
            ("sensor", format!("s{sensor}")),
        ],
    )
    .expect("simulator series keys are valid")
}

/// Between ticks of the simulator's loop.
const TICK: Duration = Duration::from_millis(10);
/// Most schedule caught up per tick (bounded work after a stall).
const MAX_CATCH_UP: Duration = Duration::from_secs(10);
/// The pause before resubmitting readings the journal refused.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What the driver does after the journal answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// Committed: count these readings as produced.
    Produced(u64),
    /// Refused for now: submitted again at [`Simulator::poll_wake`].
    Waiting,
    /// Lost in a failed commit (logged).
    Dropped,
    /// The agent is stopping.
    Stop,
}

/// The simulator's loop, sans-IO: a tick every [`TICK`] generates the
/// readings whose schedule (one per `1 / rate` s per series, from the
/// start) has come, at most [`MAX_CATCH_UP`] of it per tick; one
/// submission at a time; refused readings go back after [`RETRY_PAUSE`]
/// and no tick runs meanwhile (the schedule catches up after).
#[derive(Debug)]
pub struct Simulator {
    config: SimConfig,
    keys: Vec<Vec<SeriesKey>>,
    walks: Vec<f64>,
    period_ns: i64,
    /// The next reading's timestamp.
    next_ts: i64,
    next_tick: i64,
    /// Readings in the submission being answered.
    in_flight: u64,
    /// Refused readings, and when to submit them again.
    retry: Option<(i64, Work)>,
}

impl Simulator {
    /// Started at `now`: the first tick and readings are due at once.
    pub fn new(config: SimConfig, now: i64) -> Self {
        let keys = (0..config.devices)
            .map(|d| (0..config.sensors).map(|s| series(d, s)).collect())
            .collect();
        Self {
            walks: vec![0.0f64; config.devices * config.sensors],
            period_ns: (1e9 / config.rate.max(1e-3)) as i64,
            keys,
            config,
            next_ts: now,
            next_tick: now,
            in_flight: 0,
            retry: None,
        }
    }

    /// When to call [`poll_submit`](Self::poll_submit) next: the retry of
    /// refused readings, else the next tick.
    pub fn poll_wake(&self) -> i64 {
        self.retry.as_ref().map_or(self.next_tick, |(at, _)| *at)
    }

    /// What to submit at `now`, if anything: the refused readings once
    /// their pause is over, else a due tick's readings.
    pub fn poll_submit(&mut self, now: i64) -> Option<Work> {
        if self.retry.as_ref().is_some_and(|(at, _)| now < *at) {
            return None;
        }
        if let Some((_, work)) = self.retry.take() {
            return Some(work);
        }
        if now < self.next_tick {
            return None;
        }
        // A late tick moves the next a tick after it (no burst).
        let tick = ferry_clock::nanos(TICK);
        self.next_tick = if now >= self.next_tick.saturating_add(tick) {
            now.saturating_add(tick)
        } else {
            self.next_tick + tick
        };
        let horizon = now.min(
            self.next_ts
                .saturating_add(ferry_clock::nanos(MAX_CATCH_UP)),
        );
        let (devices, sensors) = (self.config.devices, self.config.sensors);
        let mut per: Vec<Vec<Reading>> = vec![Vec::new(); devices * sensors];
        let mut t = self.next_ts;
        while t <= horizon {
            for d in 0..devices {
                for s in 0..sensors {
                    let i = d * sensors + s;
                    let v = value(
                        self.config.waveform,
                        d,
                        s,
                        t as f64 / 1e9,
                        &mut self.walks[i],
                    );
                    per[i].push(Reading { ts_ns: t, value: v });
                }
            }
            t += self.period_ns;
        }
        self.next_ts = t;
        let mut work = Work::default();
        let mut n = 0u64;
        for (i, readings) in per.into_iter().enumerate() {
            if readings.is_empty() {
                continue;
            }
            n += readings.len() as u64;
            let (d, s) = (i / sensors, i % sensors);
            work.readings.push(SeriesReadings {
                series: self.keys[d][s].clone(),
                origin: format!("sim-{d:04}"),
                readings,
            });
        }
        self.in_flight = n;
        (!work.readings.is_empty()).then_some(work)
    }

    /// The journal answered the submission at `now`.
    pub fn handle_answer(&mut self, now: i64, answer: Result<(), Refused>) -> Answered {
        match answer {
            Ok(()) => Answered::Produced(self.in_flight),
            Err(Refused {
                error: SubmitError::Shutdown,
                ..
            }) => Answered::Stop,
            Err(Refused {
                work: Some(back), ..
            }) => {
                self.retry = Some((ferry_clock::after(now, RETRY_PAUSE), *back));
                Answered::Waiting
            }
            Err(Refused { error, work: None }) => {
                tracing::warn!(source = %self.config.name, %error, readings = self.in_flight,
                    "simulator readings not journaled; dropped");
                Answered::Dropped
            }
        }
    }
}

/// Runs the simulator until `shutdown`; counts readings in `produced`.
/// The logic is [`Simulator`]'s; this submits and sleeps.
pub async fn run(
    config: SimConfig,
    intake: Intake,
    produced: Arc<Counter>,
    mut shutdown: watch::Receiver<bool>,
) {
    let clock = SystemClock;
    let mut sim = Simulator::new(config, clock.now_ns());
    loop {
        if let Some(work) = sim.poll_submit(clock.now_ns()) {
            let answer = intake.submit_or_return(work).await.map(|_| ());
            match sim.handle_answer(clock.now_ns(), answer) {
                Answered::Produced(n) => produced.add(n),
                Answered::Stop => return,
                Answered::Waiting | Answered::Dropped => {}
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(until(clock.now_ns(), sim.poll_wake())) => {}
            _ = shutdown.changed() => if *shutdown.borrow() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_two_decimal_and_bounded() {
        let mut w = 0.0;
        for t in 0..1000 {
            let v = value(Waveform::Sine, 1, 0, t as f64, &mut w);
            assert!((17.0..=25.0).contains(&v), "{v}");
            assert_eq!((v * 100.0).round() / 100.0, v);
            let v = value(Waveform::Walk, 1, 3, t as f64, &mut w);
            assert!((3.2..=3.4).contains(&v), "{v}");
        }
        assert_eq!(
            series(3, 1).to_string(),
            r#"humidity{device="sim-0003",sensor="s1"}"#
        );
    }

    const S: i64 = ferry_clock::SEC;
    const MS: i64 = 1_000_000;
    const T0: i64 = 1_700_000_000 * S;

    fn sim() -> Simulator {
        let config = SimConfig {
            devices: 2,
            sensors: 2,
            rate: 1.0,
            ..SimConfig::default()
        };
        Simulator::new(config, T0)
    }

    /// (origin, series, timestamps) of each group.
    fn groups(work: &Work) -> Vec<(String, String, Vec<i64>)> {
        work.readings
            .iter()
            .map(|g| {
                let ts = g.readings.iter().map(|r| r.ts_ns).collect();
                (g.origin.clone(), g.series.to_string(), ts)
            })
            .collect()
    }

    #[test]
    fn readings_follow_their_schedule_and_ticks_every_10ms() {
        let mut s = sim();
        assert_eq!(s.poll_wake(), T0, "the first tick at once");
        let work = s.poll_submit(T0).unwrap();
        let g = groups(&work);
        assert_eq!(g.len(), 4);
        assert_eq!(g[0].0, "sim-0000");
        assert_eq!(g[3].1, r#"humidity{device="sim-0001",sensor="s1"}"#);
        assert!(g.iter().all(|(_, _, ts)| ts == &[T0]));
        assert_eq!(s.handle_answer(T0, Ok(())), Answered::Produced(4));
        assert_eq!(s.poll_wake(), T0 + 10 * MS);
        assert!(s.poll_submit(T0 + 5 * MS).is_none(), "not a tick yet");
        assert!(
            s.poll_submit(T0 + 10 * MS).is_none(),
            "a tick, no reading due"
        );
        assert_eq!(s.poll_wake(), T0 + 20 * MS);
        let work = s.poll_submit(T0 + S + 3 * MS).unwrap();
        assert!(groups(&work).iter().all(|(_, _, ts)| ts == &[T0 + S]));
        assert_eq!(
            s.poll_wake(),
            T0 + S + 13 * MS,
            "a late tick: the next a tick after it, no burst"
        );
    }

    #[test]
    fn after_a_stall_each_tick_catches_up_at_most_10s_of_schedule() {
        let mut s = sim();
        let _ = s.poll_submit(T0).unwrap();
        s.handle_answer(T0, Ok(()));
        let now = T0 + 60 * S;
        let work = s.poll_submit(now).unwrap();
        let ts: Vec<i64> = (1..=11).map(|i| T0 + i * S).collect();
        assert!(groups(&work).iter().all(|(_, _, t)| *t == ts));
        assert_eq!(s.handle_answer(now, Ok(())), Answered::Produced(44));
        let work = s.poll_submit(s.poll_wake()).unwrap();
        assert_eq!(groups(&work)[0].2.first(), Some(&(T0 + 12 * S)));
        assert_eq!(groups(&work)[0].2.len(), 11);
    }

    #[test]
    fn refused_readings_go_back_after_100ms_and_no_tick_runs_meanwhile() {
        let mut s = sim();
        let work = s.poll_submit(T0).unwrap();
        let back = Err(Refused::full(9, 8, work));
        assert_eq!(s.handle_answer(T0 + MS, back), Answered::Waiting);
        assert_eq!(s.poll_wake(), T0 + 101 * MS);
        assert!(s.poll_submit(T0 + 100 * MS).is_none());
        let again = s.poll_submit(T0 + 101 * MS).unwrap();
        assert!(groups(&again).iter().all(|(_, _, ts)| ts == &[T0]));
        assert_eq!(
            s.handle_answer(T0 + 102 * MS, Ok(())),
            Answered::Produced(4)
        );
        // The schedule catches up: 1 s's reading comes with the next tick
        // after it.
        assert_eq!(s.poll_wake(), T0 + 10 * MS);
        assert!(s.poll_submit(T0 + 102 * MS).is_none());
    }

    #[test]
    fn a_failed_commit_drops_and_a_stop_stops() {
        let mut s = sim();
        let _ = s.poll_submit(T0).unwrap();
        let failed = Err(Refused::from(SubmitError::Storage("io".into())));
        assert_eq!(s.handle_answer(T0, failed), Answered::Dropped);
        assert!(s.poll_submit(T0 + 10 * MS).is_none(), "not resubmitted");
        let _ = s.poll_submit(T0 + S).unwrap();
        let stop = Err(Refused::from(SubmitError::Shutdown));
        assert_eq!(s.handle_answer(T0 + S, stop), Answered::Stop);
    }
}
