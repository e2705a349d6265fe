//! libsrtp as an independent SRTP peer for the tests (`libsrtp_peer.py`,
//! through PyPI's pylibsrtp, which the test command installs).

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

/// One request to the libsrtp peer (see `libsrtp_peer.py`) and its answer.
pub fn libsrtp(request: Value) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/libsrtp_peer.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "libsrtp peer failed (is pylibsrtp installed? the test command installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
