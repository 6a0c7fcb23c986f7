//! `examples/shop`: the order, inventory, payment and shipping services (Python and Rust
//! workers over plain HTTP, each service a consumer group) run from their one command
//! against this build of Refold, and check what happened.

use std::process::Command;

use crate::support::{refold_binary, repo_root};

#[test]
fn the_shop_example_runs_from_one_command() {
    let output = Command::new(repo_root().join("examples/shop/run"))
        .args(["--refold", refold_binary(), "--orders", "90"])
        .output()
        .expect("examples/shop/run starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the shop failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("the shop ran as expected"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}
