//! `MemoryBudget`, `Charge` and `Hold`.

use super::*;

#[test]
fn default_leaves_sources_the_rest_of_a_32_mib_agent() {
    assert_eq!(default_budget(4 << 20), 8 << 20);
    assert_eq!(default_budget(0), 12 << 20);
    assert_eq!(default_budget(64 << 20), MIN_DEFAULT_BYTES);
}

#[test]
fn charges_fit_under_the_limit_and_are_handed_back() {
    let budget = MemoryBudget::new(100);
    let mut a = Charge::new(budget.clone());
    let mut b = Charge::new(budget.clone());
    assert!(a.try_grow(60));
    assert!(!b.try_grow(41), "would pass the limit");
    assert!(b.try_grow(40));
    assert_eq!(budget.used(), 100);
    assert!(!a.try_grow(1));
    assert_eq!(a.clear(), 60);
    assert_eq!(budget.used(), 40);
    drop(b);
    assert_eq!(budget.used(), 0);
}

#[test]
fn buffers_are_charged_past_the_limit_and_crowd_caches_out() {
    let budget = MemoryBudget::new(100);
    let mut buffer = Charge::new(budget.clone());
    buffer.set(150);
    assert_eq!(budget.used(), 150);
    let mut cache = Charge::new(budget.clone());
    assert!(!cache.try_grow(1));
    buffer.set(20);
    assert!(cache.try_grow(80));
    assert_eq!(budget.used(), 100);
}

#[test]
fn a_refusal_is_counted_and_moves_the_pressure() {
    let budget = MemoryBudget::new(10);
    let mut pressure = budget.pressure();
    assert!(!pressure.has_changed().unwrap());
    budget.record_refusal(3);
    assert!(pressure.has_changed().unwrap());
    pressure.mark_unchanged();
    assert_eq!((budget.refused_series(), budget.refused_readings()), (1, 3));
    let before = budget.activity();
    let mut c = Charge::new(budget.clone());
    assert!(c.try_grow(5));
    assert!(budget.activity() > before, "the idle trim sees charges");
    let mut out = String::new();
    budget.render_prometheus(&mut out);
    assert!(
        out.contains("ferry_agent_memory_budget_bytes 10\n"),
        "{out}"
    );
    assert!(out.contains("ferry_agent_memory_used_bytes 5\n"), "{out}");
    assert!(
        out.contains("ferry_agent_memory_refused_readings_total 3\n"),
        "{out}"
    );
}

#[test]
fn chunks_are_admitted_with_room_or_alone_and_hand_back_what_they_hold() {
    let budget = MemoryBudget::new(100);
    let mut buffer = Charge::new(budget.clone());
    buffer.set(90);
    // Nothing is held: one chunk proceeds, past the limit.
    let mut first = budget.try_hold(50).expect("alone, it proceeds");
    first.set(50);
    assert_eq!((budget.used(), budget.held()), (140, 50));
    // A second one waits until there is room.
    assert!(budget.try_hold(10).is_none());
    first.set(5);
    assert_eq!((budget.used(), budget.held()), (95, 5));
    let mut second = budget.try_hold(5).expect("fits");
    second.set(5);
    assert!(budget.try_hold(1).is_none());
    drop(first);
    drop(second);
    assert_eq!((budget.used(), budget.held()), (90, 0));
    // Admitted, not yet parsed: alone still means alone.
    let admitted = budget.try_hold(50).unwrap();
    assert!(budget.try_hold(50).is_none());
    drop(admitted);
    drop(buffer);
    assert_eq!(budget.used(), 0);
}

#[test]
fn holds_do_not_crowd_out_state_that_refuses_readings() {
    let budget = MemoryBudget::new(100);
    let mut pending = budget.empty_hold();
    pending.set(80);
    let mut windows = Charge::new(budget.clone());
    assert!(!windows.try_grow(30), "a cache would not fit");
    assert!(windows.try_grow_beside_holds(30), "window state does");
    assert!(!windows.try_grow_beside_holds(71));
    assert!(budget.try_hold(1).is_none(), "the pending batch is held");
    drop(pending);
    assert!(budget.try_hold(1).is_some());
}

#[test]
fn a_release_wakes_a_waiting_hold() {
    use std::future::Future as _;
    let budget = MemoryBudget::new(10);
    let mut held = budget.try_hold(10).unwrap();
    held.set(10);
    let room = budget.room();
    tokio::pin!(room);
    room.as_mut().enable();
    assert!(budget.try_hold(1).is_none());
    budget.record_wait();
    drop(held);
    // Notified: the future is ready without any other wake-up.
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    assert!(room.as_mut().poll(&mut cx).is_ready());
    assert!(budget.try_hold(1).is_some());
    assert_eq!(budget.waits(), 1);
    let mut out = String::new();
    budget.render_prometheus(&mut out);
    assert!(out.contains("ferry_agent_memory_waits_total 1\n"), "{out}");
}
