//! Sampler and tumbling windows with a fake clock and scripted sensors.

use ferry_firmware::sampler::{ConfigError, Sampler};
use ferry_firmware::sensor::{Quantity, ReadError, SHT4X_QUANTITIES, Sensor, TMP102_QUANTITIES};
use ferry_firmware::window::Accumulator;
use ferry_proto::link::{LinkConfig, WindowReport};

/// A sensor whose value is `at_ms / 100 + offset` per quantity; it records
/// the instants it was read at and fails on the instants in `fail_at`.
struct Scripted {
    quantities: &'static [Quantity],
    reads: Vec<u64>,
    fail_at: Vec<u64>,
}

impl Scripted {
    fn new(quantities: &'static [Quantity]) -> Self {
        Self {
            quantities,
            reads: Vec::new(),
            fail_at: Vec::new(),
        }
    }
}

impl Sensor for Scripted {
    fn quantities(&self) -> &'static [Quantity] {
        self.quantities
    }

    fn read(&mut self, at_ms: u64, out: &mut [f32]) -> Result<(), ReadError> {
        self.reads.push(at_ms);
        if self.fail_at.contains(&at_ms) {
            return Err(ReadError::Crc);
        }
        for (i, v) in out.iter_mut().enumerate() {
            *v = (at_ms / 100) as f32 + 1_000.0 * i as f32;
        }
        Ok(())
    }
}

fn cfg(sample_period_ms: u32, window_ms: u32) -> LinkConfig {
    LinkConfig {
        sample_period_ms,
        window_ms,
    }
}

fn stats(channel: u8, start_ms: u64, len_ms: u32, values: &[f32]) -> WindowReport {
    let mut acc = Accumulator::new(values[0]);
    for &v in &values[1..] {
        acc.add(v);
    }
    acc.report(channel, start_ms, len_ms)
}

#[test]
fn each_sensor_on_its_own_period_into_one_window_grid() {
    let mut a = Scripted::new(SHT4X_QUANTITIES);
    let mut b = Scripted::new(TMP102_QUANTITIES);
    let mut s = Sampler::new(0, cfg(100, 1_000), &[2, 1], &[1, 3]).unwrap();
    for now in (0..1_000).step_by(7) {
        assert_eq!(s.poll(now, &mut [&mut a, &mut b]), None);
    }
    let closed = s.poll(1_000, &mut [&mut a, &mut b]).unwrap();
    assert_eq!(a.reads, (0..10).map(|k| k * 100).collect::<Vec<_>>());
    assert_eq!(b.reads, [0, 300, 600, 900]);
    let v: Vec<f32> = (0..10).map(|k| k as f32).collect();
    let hv: Vec<f32> = v.iter().map(|x| x + 1_000.0).collect();
    assert_eq!(
        &closed[..],
        &[
            stats(0, 0, 1_000, &v),
            stats(1, 0, 1_000, &hv),
            stats(2, 0, 1_000, &[0.0, 3.0, 6.0, 9.0]),
        ]
    );
    assert_eq!(closed[0].count, 10);
    assert_eq!(closed[0].sum, 45.0);
    assert_eq!(
        (
            closed[0].min,
            closed[0].max,
            closed[0].first,
            closed[0].last
        ),
        (0.0, 9.0, 0.0, 9.0)
    );
    // The sample at the boundary belongs to the next window; the TMP102's
    // phase carries on across windows (1 200, 1 500, 1 800).
    assert_eq!(s.poll(1_000, &mut [&mut a, &mut b]), None);
    let closed = s.poll(2_000, &mut [&mut a, &mut b]).unwrap();
    assert_eq!(closed[2], stats(2, 1_000, 1_000, &[12.0, 15.0, 18.0]));
    assert_eq!(s.stats().samples, 20 + 7);
}

#[test]
fn a_late_poll_catches_up_one_boundary_per_call_at_scheduled_instants() {
    let mut a = Scripted::new(TMP102_QUANTITIES);
    let mut s = Sampler::new(500, cfg(250, 1_000), &[1], &[1]).unwrap();
    let mut starts = Vec::new();
    while let Some(closed) = s.poll(3_700, &mut [&mut a]) {
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].count, 4);
        starts.push(closed[0].start_ms);
    }
    assert_eq!(starts, [500, 1_500, 2_500]);
    // Samples due by 3 700 in the open window [3 500, 4 500) are taken too.
    assert_eq!(a.reads.last(), Some(&3_500));
    assert_eq!(a.reads.len(), 13);
    assert_eq!(s.next_due_ms(), 3_750);
}

#[test]
fn config_takes_effect_at_the_next_window_boundary() {
    let mut a = Scripted::new(TMP102_QUANTITIES);
    let mut s = Sampler::new(0, cfg(100, 1_000), &[1], &[1]).unwrap();
    s.poll(1_500, &mut [&mut a]).unwrap();
    s.apply_config(cfg(50, 300)).unwrap();
    assert_eq!(s.config(), cfg(100, 1_000));
    assert_eq!(s.pending_config(), Some(cfg(50, 300)));
    // [1 000, 2 000) still runs on the old config.
    let closed = s.poll(2_000, &mut [&mut a]).unwrap();
    assert_eq!(
        (closed[0].start_ms, closed[0].len_ms, closed[0].count),
        (1_000, 1_000, 10)
    );
    assert_eq!(s.config(), cfg(50, 300));
    assert_eq!(s.epoch_ms(), 2_000);
    let closed = s.poll(2_300, &mut [&mut a]).unwrap();
    assert_eq!(
        (closed[0].start_ms, closed[0].len_ms, closed[0].count),
        (2_000, 300, 6)
    );
    assert_eq!(a.reads[20..], [2_000, 2_050, 2_100, 2_150, 2_200, 2_250]);
    // The next call takes the sample at the new window's start.
    assert_eq!(s.poll(2_300, &mut [&mut a]), None);
    assert_eq!(a.reads.last(), Some(&2_300));
}

#[test]
fn the_current_config_cancels_a_pending_one() {
    let mut s = Sampler::new(0, cfg(100, 1_000), &[1], &[1]).unwrap();
    s.apply_config(cfg(50, 300)).unwrap();
    s.apply_config(cfg(100, 1_000)).unwrap();
    assert_eq!(s.pending_config(), None);
}

#[test]
fn out_of_range_configs_and_layouts_are_refused() {
    let mut s = Sampler::new(0, cfg(100, 1_000), &[1], &[1]).unwrap();
    assert_eq!(
        s.apply_config(cfg(9, 1_000)),
        Err(ConfigError::PeriodTooShort)
    );
    assert_eq!(s.apply_config(cfg(100, 99)), Err(ConfigError::BadWindow));
    assert_eq!(
        s.apply_config(cfg(100, 86_400_001)),
        Err(ConfigError::BadWindow)
    );
    assert_eq!(s.pending_config(), None);
    assert_eq!(
        Sampler::new(0, cfg(100, 1_000), &[1], &[0]).err(),
        Some(ConfigError::BadLayout)
    );
    assert_eq!(
        Sampler::new(0, cfg(100, 1_000), &[1, 1], &[1]).err(),
        Some(ConfigError::BadLayout)
    );
    assert_eq!(
        Sampler::new(0, cfg(100, 1_000), &[5, 4], &[1, 1]).err(),
        Some(ConfigError::BadLayout)
    );
    assert_eq!(
        Sampler::new(0, cfg(5, 1_000), &[1], &[1]).err(),
        Some(ConfigError::PeriodTooShort)
    );
}

#[test]
fn failed_reads_are_counted_and_empty_windows_not_reported() {
    let mut a = Scripted::new(TMP102_QUANTITIES);
    a.fail_at = vec![100, 1_000, 1_500];
    let mut s = Sampler::new(0, cfg(500, 1_000), &[1], &[1]).unwrap();
    let closed = s.poll(2_500, &mut [&mut a]).unwrap();
    assert_eq!(closed[..], [stats(0, 0, 1_000, &[0.0, 5.0])]);
    // [1 000, 2 000) had only failed reads: no window; [2 000, 3 000) is open.
    assert_eq!(s.poll(2_500, &mut [&mut a]), None);
    assert_eq!(s.stats().read_errors, 2);
    let closed = s.poll(3_000, &mut [&mut a]).unwrap();
    assert_eq!(closed[..], [stats(0, 2_000, 1_000, &[20.0, 25.0])]);
}
