//! Tests of the fan-out runner.

use super::*;

#[test]
fn a_subscriber_past_its_budget_skips_only_under_skip() {
    let skip = LagBudget {
        max: 10,
        policy: LagPolicy::Skip,
    };
    let wait = LagBudget {
        max: 10,
        policy: LagPolicy::Backpressure,
    };
    assert_eq!(plan(5, 5, skip), Pass::Idle);
    assert_eq!(plan(5, 15, skip), Pass::Handle, "at the budget: handled");
    assert_eq!(plan(5, 16, skip), Pass::Skip { from: 6, to: 16 });
    assert_eq!(
        plan(5, 1000, wait),
        Pass::Handle,
        "backpressure never skips"
    );
    assert_eq!(plan(9, 3, skip), Pass::Idle, "a head behind the cursor");
}

#[test]
fn a_pass_that_read_nothing_moves_to_the_head() {
    assert_eq!(cursor_after(20, 7, 0), 20, "entries gone: passed over");
    assert_eq!(cursor_after(20, 12, 5), 12);
    let mut c = FanoutCommit {
        cursor: 3,
        ..FanoutCommit::default()
    };
    assert!(!worth_committing(&c, 3));
    c.removed.push("old-rule".into());
    assert!(worth_committing(&c, 3));
    c.removed.clear();
    c.cursor = 4;
    assert!(worth_committing(&c, 3));
}
