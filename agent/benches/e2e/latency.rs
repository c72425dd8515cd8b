//! Latency at 50,000 readings/s: send → collector ack, FIFO count-matching.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::agent::Agent;
use crate::collector::Collector;
use crate::load::{Lines, Span, drain_deadline, wait_accounted};
use crate::{CONNECTIONS, PACED_RATE, PACED_TICK, TARGET_P99_MS};

pub struct Latency {
    pub readings: u64,
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub fn latency_phase(agent: &Agent, collector: &Collector, secs: Duration, span: Span) -> Latency {
    eprintln!(
        "e2e: latency: 1 connection at {PACED_RATE} readings/s for {:.1} s",
        secs.as_secs_f64()
    );
    let base = collector.stored();
    let per_tick = (PACED_RATE as f64 * PACED_TICK.as_secs_f64()) as usize;
    let ticks = (secs.as_secs_f64() / PACED_TICK.as_secs_f64()) as u64;
    let done = Arc::new(AtomicBool::new(false));

    // The collector's stored counter, sampled: (time, readings stored).
    let sampler = {
        let (stored, done) = (collector.stored.clone(), done.clone());
        std::thread::spawn(move || {
            let mut samples: Vec<(Instant, u64)> = Vec::with_capacity(1 << 16);
            let mut last = u64::MAX;
            while !done.load(Ordering::Relaxed) {
                let now = Instant::now();
                let v = stored.get() - base;
                if v != last {
                    samples.push((now, v));
                    last = v;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            samples
        })
    };

    let mut tcp = TcpStream::connect(agent.influx).expect("connect to the agent");
    tcp.set_nodelay(true).ok();
    let mut lines = Lines::new(CONNECTIONS, span);
    let mut buf = Vec::with_capacity(per_tick * 80);
    // (scheduled send time, readings sent up to and including this tick)
    let mut sends: Vec<(Instant, u64)> = Vec::with_capacity(ticks as usize);
    let started = Instant::now() + Duration::from_millis(5);
    eprintln!(
        "e2e: latency: phase starts at unix {:.3} s (to match logs)",
        (ferry_collector::now_ns() + 5_000_000) as f64 / 1e9
    );
    let mut last_print = Instant::now();
    for i in 0..ticks {
        let scheduled = started + PACED_TICK * i as u32;
        if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        buf.clear();
        lines.push(&mut buf, per_tick);
        tcp.write_all(&buf).expect("write to the agent");
        sends.push((scheduled, (i + 1) * per_tick as u64));
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "e2e: latency: {:.1} s, sent {}, stored {}",
                started.elapsed().as_secs_f64(),
                (i + 1) * per_tick as u64,
                collector.stored() - base
            );
            last_print = Instant::now();
        }
    }
    let elapsed_send = started.elapsed();
    let total = ticks * per_tick as u64;
    wait_accounted(
        collector,
        agent,
        base + total,
        "latency",
        drain_deadline(total),
    );
    done.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler thread");
    drop(tcp);

    // Each tick's readings are acked when the counter first covers them.
    let mut lat: Vec<f64> = Vec::with_capacity(sends.len());
    let mut j = 0;
    for (scheduled, upto) in &sends {
        while j < samples.len() && samples[j].1 < *upto {
            j += 1;
        }
        let acked = samples.get(j).map_or(Instant::now(), |s| s.0);
        lat.push(acked.saturating_duration_since(*scheduled).as_secs_f64() * 1e3);
    }
    print_stalls(&lat);
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    Latency {
        readings: total,
        rate: total as f64 / elapsed_send.as_secs_f64(),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
    }
}

/// Where the latency went over the target: runs of consecutive ticks over
/// it, with their offset in the phase and their worst latency (to tell one
/// stall from a slow steady path).
pub fn print_stalls(lat: &[f64]) {
    let tick_s = PACED_TICK.as_secs_f64();
    let mut runs: Vec<(usize, usize, f64)> = Vec::new(); // (first tick, ticks, worst ms)
    for (i, &ms) in lat.iter().enumerate() {
        if ms <= TARGET_P99_MS {
            continue;
        }
        match runs.last_mut() {
            Some((first, n, worst)) if *first + *n == i => {
                *n += 1;
                *worst = worst.max(ms);
            }
            _ => runs.push((i, 1, ms)),
        }
    }
    let over: usize = runs.iter().map(|r| r.1).sum();
    runs.sort_by(|a, b| b.2.total_cmp(&a.2));
    let worst: Vec<String> = runs
        .iter()
        .take(5)
        .map(|(first, n, worst)| {
            format!(
                "+{:.2} s for {:.0} ms (worst {worst:.0} ms)",
                *first as f64 * tick_s,
                *n as f64 * tick_s * 1e3
            )
        })
        .collect();
    eprintln!(
        "e2e: latency: {over} of {} ticks over {TARGET_P99_MS} ms in {} runs; worst: {}",
        lat.len(),
        runs.len(),
        worst.join(", ")
    );
}
