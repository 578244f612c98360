//! Tuning is reviewed as diffs of deterministic simulation tables: the
//! `--quick` shared-prefix table is kept under version control and compared here.
//!
//! After an intended behaviour change (in podsim or in picker-core), regenerate with
//! `PODSIM_UPDATE_SNAPSHOTS=1 cargo test -p podsim --test snapshot` and review the diff.

use std::path::PathBuf;

use podsim::bench::{run_plan, Plan, WorkloadKind};
use podsim::report;

fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("PODSIM_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with PODSIM_UPDATE_SNAPSHOTS=1", path.display()));
    let diff = |e: &str, a: &str| -> Vec<String> {
        e.lines()
            .zip(a.lines())
            .filter(|(e, a)| e != a)
            .map(|(e, a)| format!("- {e}\n+ {a}"))
            .collect()
    };
    assert!(
        expected == actual,
        "{} differs from the simulation ({} lines changed). If intended, regenerate with \
         PODSIM_UPDATE_SNAPSHOTS=1 and review the diff:\n{}",
        path.display(),
        diff(&expected, actual).len(),
        diff(&expected, actual).join("\n")
    );
}

#[test]
fn shared_prefix_quick_table() {
    let plan = Plan::new(WorkloadKind::SharedPrefix, true);
    let rows = run_plan(&plan, 2, &|_, _, _| {});
    let title = format!(
        "shared-prefix quick ({} s, {} s warm-up, seed {})",
        plan.horizon_s, plan.warmup_s, plan.seed
    );
    check("shared-prefix-quick.md", &report::markdown(&title, &rows));
}
