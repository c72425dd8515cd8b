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
use ferry_clock::now_ns;

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

/// Runs the simulator until `shutdown`; counts readings in `produced`.
pub async fn run(
    config: SimConfig,
    intake: Intake,
    produced: Arc<Counter>,
    mut shutdown: watch::Receiver<bool>,
) {
    let keys: Vec<Vec<SeriesKey>> = (0..config.devices)
        .map(|d| (0..config.sensors).map(|s| series(d, s)).collect())
        .collect();
    let mut walks = vec![0.0f64; config.devices * config.sensors];
    let period_ns = (1e9 / config.rate.max(1e-3)) as i64;
    let mut next_ts = now_ns();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => if *shutdown.borrow() { return },
        }
        let now = now_ns();
        let mut work = Work::default();
        let mut n = 0u64;
        // Catch up at most 10 s of schedule per tick (bounded work).
        let horizon = now.min(next_ts + 10 * 1_000_000_000);
        let mut t = next_ts;
        let mut per: Vec<Vec<Reading>> = vec![Vec::new(); config.devices * config.sensors];
        while t <= horizon {
            for d in 0..config.devices {
                for s in 0..config.sensors {
                    let i = d * config.sensors + s;
                    let v = value(config.waveform, d, s, t as f64 / 1e9, &mut walks[i]);
                    per[i].push(Reading { ts_ns: t, value: v });
                }
            }
            t += period_ns;
        }
        next_ts = t;
        for (i, readings) in per.into_iter().enumerate() {
            if readings.is_empty() {
                continue;
            }
            n += readings.len() as u64;
            let (d, s) = (i / config.sensors, i % config.sensors);
            work.readings.push(SeriesReadings {
                series: keys[d][s].clone(),
                origin: format!("sim-{d:04}"),
                readings,
            });
        }
        if work.readings.is_empty() {
            continue;
        }
        loop {
            match intake.submit_or_return(work).await {
                Ok(_) => {
                    produced.add(n);
                    break;
                }
                Err(Refused {
                    error: SubmitError::Shutdown,
                    ..
                }) => return,
                Err(Refused {
                    work: Some(back), ..
                }) => {
                    work = *back;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = shutdown.changed() => if *shutdown.borrow() { return },
                    }
                }
                Err(Refused { error, work: None }) => {
                    tracing::warn!(source = %config.name, %error, readings = n,
                        "simulator readings not journaled; dropped");
                    break;
                }
            }
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
}
