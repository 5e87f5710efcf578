//! One TLS stack: the AWS SDK clients and reqwest use rustls 0.23 on aws-lc-rs. The legacy
//! smithy connector (rustls 0.21, ring, h2 0.3, rustls-webpki 0.101, hyper-rustls 0.24) must
//! not come back through a dependency's default features.

use std::process::Command;

fn cargo_tree(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--locked", "--target", "all"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_legacy_tls_stack_is_not_built() {
    for spec in [
        "rustls@0.21",
        "h2@0.3",
        "rustls-webpki@0.101",
        "hyper-rustls@0.24",
        "hyper@0.14",
    ] {
        let (ok, text) = cargo_tree(&["-i", spec, "-e", "normal,build,dev"]);
        assert!(
            !ok && text.contains("did not match any packages"),
            "{spec} is in the dependency graph:\n{text}"
        );
    }
    // ring may be listed in Cargo.lock as an optional dependency nobody enables: it must
    // not be part of any build.
    let (_, text) = cargo_tree(&["-i", "ring", "-e", "normal,build,dev"]);
    assert!(
        text.contains("did not match any packages") || text.contains("nothing to print"),
        "ring is built:\n{text}"
    );
}

#[test]
fn rustls_is_one_version_on_aws_lc_rs() {
    let (ok, text) = cargo_tree(&["-d", "-e", "normal,build"]);
    assert!(ok, "{text}");
    for name in [
        "rustls ",
        "rustls-webpki ",
        "h2 ",
        "hyper ",
        "hyper-rustls ",
    ] {
        assert!(
            !text.lines().any(|l| l.starts_with(name)),
            "two versions of {name}in the graph:\n{text}"
        );
    }
    let (ok, text) = cargo_tree(&["-e", "features", "-i", "rustls"]);
    assert!(ok, "{text}");
    assert!(text.contains("rustls feature \"aws_lc_rs\""), "{text}");
    assert!(!text.contains("rustls feature \"ring\""), "{text}");
}
