//! The UART receive ring (`ferry_firmware::rx_ring`): order, capacity,
//! overflow accounting, the counters' wrap-around, a model check of every
//! interleaving of pushes and pops, and a real producer thread racing a
//! consumer thread (the interrupt handler and the main loop).

use std::collections::VecDeque;

use ferry_firmware::rx_ring::RxRing;
use proptest::prelude::*;

#[test]
fn bytes_come_out_in_order_and_a_full_ring_drops_the_new_byte_counted() {
    let mut ring = RxRing::<8>::new();
    let (mut tx, mut rx) = ring.split();
    assert_eq!(rx.pop(), None);
    for b in 0..8u8 {
        assert!(tx.push(b));
    }
    assert_eq!(tx.ring().len(), 8);
    // Full: the ninth and tenth bytes are refused and counted; the eight
    // already in stay.
    assert!(!tx.push(100));
    assert!(!tx.push(101));
    assert_eq!(tx.ring().overflows(), 2);
    let out: Vec<u8> = std::iter::from_fn(|| rx.pop()).collect();
    assert_eq!(out, (0..8).collect::<Vec<u8>>());
    assert!(rx.ring().is_empty());
    // Room again.
    assert!(tx.push(7));
    assert_eq!(rx.pop(), Some(7));
    assert_eq!(rx.ring().overflows(), 2);
}

#[test]
fn the_position_counters_wrap_around_without_losing_a_byte() {
    let mut ring = RxRing::<4>::starting_at(usize::MAX - 5);
    let (mut tx, mut rx) = ring.split();
    let mut next_out = 0u8;
    for b in 0..40u8 {
        assert!(tx.push(b), "byte {b}");
        if b % 3 == 2 {
            // Drain now and then: the counters cross usize::MAX mid-ring.
            while let Some(got) = rx.pop() {
                assert_eq!(got, next_out);
                next_out += 1;
            }
        }
    }
    while let Some(got) = rx.pop() {
        assert_eq!(got, next_out);
        next_out += 1;
    }
    assert_eq!(next_out, 40);
    assert_eq!(rx.ring().overflows(), 0);
}

#[derive(Debug, Clone)]
enum Op {
    Push(u8),
    Pop,
}

proptest! {
    /// Any interleaving of pushes and pops behaves as a bounded queue that
    /// refuses (and counts) what does not fit.
    #[test]
    fn the_ring_is_a_bounded_queue(
        ops in proptest::collection::vec(
            prop_oneof![any::<u8>().prop_map(Op::Push), Just(Op::Pop)], 0..400),
        start in any::<usize>(),
    ) {
        let mut ring = RxRing::<16>::starting_at(start);
        let (mut tx, mut rx) = ring.split();
        let mut model: VecDeque<u8> = VecDeque::new();
        let mut refused = 0u32;
        for op in ops {
            match op {
                Op::Push(b) => {
                    let fits = model.len() < 16;
                    prop_assert_eq!(tx.push(b), fits);
                    if fits { model.push_back(b) } else { refused += 1 }
                }
                Op::Pop => prop_assert_eq!(rx.pop(), model.pop_front()),
            }
            prop_assert_eq!(rx.ring().len(), model.len());
            prop_assert_eq!(rx.ring().overflows(), refused);
        }
    }
}

/// A producer thread (the interrupt handler) pushes bursts while a consumer
/// thread (the main loop) pops: every byte arrives once, in order. The
/// producer here waits for room rather than drop, so that the test checks
/// the hand-over between the two sides under real concurrency, not the
/// overflow rule (checked above).
#[test]
fn a_concurrent_producer_and_consumer_hand_over_every_byte_in_order() {
    const TOTAL: usize = 300_000;
    let mut ring = RxRing::<64>::new();
    let (mut tx, mut rx) = ring.split();
    std::thread::scope(|s| {
        s.spawn(move || {
            for i in 0..TOTAL {
                while !tx.push(i as u8) {
                    std::hint::spin_loop();
                }
            }
        });
        let mut got = 0usize;
        while got < TOTAL {
            match rx.pop() {
                Some(b) => {
                    assert_eq!(b, got as u8, "byte {got} out of order");
                    got += 1;
                }
                None => std::hint::spin_loop(),
            }
        }
        assert_eq!(rx.pop(), None);
    });
    // The waiting producer refused some pushes (counted as overflows by the
    // ring); none of them lost a byte, since each was retried.
    assert!(ring.is_empty());
}
