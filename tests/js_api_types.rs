//! `js-api/gateway.d.ts` checked against `js-api/gateway.js` by the
//! TypeScript compiler (tests/e2e's pinned `typescript`, installed by the
//! test command): the shipped pair agrees, and a copy that drifts — a
//! method renamed in the code, a member only the types declare, an export
//! gone — is refused.

use std::path::{Path, PathBuf};
use std::process::Command;

fn js_api() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js-api")
}

/// Runs the check on the js-api in `dir`; its output when it failed.
fn check(dir: &Path) -> Result<(), String> {
    let out = Command::new("bash")
        .arg(js_api().join("test/check-types.sh"))
        .arg(dir)
        .output()
        .expect("bash runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A copy of js-api with `edit` applied to one of its files.
fn drifted(file: &str, from: &str, to: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("test")).unwrap();
    for name in ["gateway.js", "gateway.d.ts", "test/types-match.ts"] {
        std::fs::copy(js_api().join(name), dir.path().join(name)).unwrap();
    }
    let path = dir.path().join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} no longer has {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    dir
}

#[test]
fn the_types_match_the_code() {
    check(&js_api()).unwrap();
}

#[test]
fn drift_between_types_and_code_is_refused() {
    let renamed = drifted("gateway.js", "async hold()", "async holdCall()");
    assert!(check(renamed.path()).is_err(), "a renamed method passed");
    let declared_only = drifted(
        "gateway.d.ts",
        "readonly held: boolean;",
        "readonly held: boolean;\n  readonly muted: boolean;",
    );
    assert!(
        check(declared_only.path()).is_err(),
        "a member only the types have passed"
    );
    let extra_parameter = drifted(
        "gateway.d.ts",
        "hangup(): Promise<void>;",
        "hangup(reason?: string): Promise<void>;",
    );
    assert!(
        check(extra_parameter.path()).is_err(),
        "a parameter the code lacks passed"
    );
    let gone = drifted(
        "gateway.js",
        "export function gatewayAddresses",
        "function gatewayAddresses",
    );
    let err = check(gone.path()).unwrap_err();
    assert!(err.contains("types-match.ts"), "{err}");
}
