#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what the tests
# need (Debian packages, PyPI packages, cargo-fuzz), then format check, clippy, every test,
# and a bounded run of each fuzz target.
#
#   FUZZ_SECONDS=N   seconds per fuzz target (default 20; 0 skips fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."

# A one-off build gains nothing from the incremental cache, which took over
# a gigabyte of the disk (see the dev profile in Cargo.toml for the rest).
export CARGO_INCREMENTAL=0

step() { printf '\n=== %s\n' "$*"; }

# Debian packages the tests use: curl is a stock HTTP/2 client; nft checks the generated firewall rules;
# Chromium and Firefox ESR are the real browsers of the browser tests (driven by
# playwright-core and by puppeteer-core over WebDriver BiDi);
# SIPp (sip-tester), baresip and Kamailio are real SIP peers; HAProxy is the
# HTTP load balancer in front of several gateway nodes, Redis their shared
# session directory; dnsmasq serves SIP servers' DNS SRV records; libssl-dev
# (and pkg-config) build the load benchmark's OpenSSL DTLS client; libopus-dev
# is the Opus library the gateway links for transcoding.
packages=(curl nftables chromium firefox-esr iproute2 sip-tester baresip-core kamailio kamailio-tls-modules haproxy redis-server dnsmasq-base libssl-dev libopus-dev pkg-config)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    step "installing ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python packages the interop tests use: libsrtp as an independent SRTP peer.
if ! python3 -c "import pylibsrtp" 2>/dev/null; then
    step "installing pylibsrtp"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "pylibsrtp==1.0.0"
fi

# npm packages of the browser tests (playwright-core, puppeteer-core) and of the
# js-api type check (typescript), pinned by package-lock.json.
if [ ! -d tests/e2e/node_modules/playwright-core ] || [ ! -d tests/e2e/node_modules/puppeteer-core ] \
    || [ ! -d tests/e2e/node_modules/typescript ]; then
    step "installing tests/e2e npm packages"
    (cd tests/e2e && npm ci --no-audit --no-fund)
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --locked --all-targets -- -D warnings

step "js-api unit tests (node --test)"
node --test js-api/test/

step "cargo test"
# Real-browser tests run real Chromium and Firefox against real media timing
# on a 2-core machine; a browser test that fails is run once more on its
# own, and the run says so. A failure anywhere else, or twice, fails the run.
test_log=$(mktemp)
if ! cargo test --locked --no-fail-fast 2>&1 | tee "$test_log"; then
    failed=$(awk '/Running tests\/[a-z_]+\.rs/ { match($0, /tests\/[a-z_]+\.rs/); bin = substr($0, RSTART + 6, RLENGTH - 9) }
                  / \.\.\. FAILED$/ { print bin, $2 }' "$test_log" | sort -u)
    [ -n "$failed" ] || { echo "cargo test failed outside any test"; exit 1; }
    while read -r bin name; do
        case "$bin" in
            browser_*) ;;
            *) echo "test $name in $bin failed"; exit 1 ;;
        esac
    done <<< "$failed"
    while read -r bin name; do
        step "retrying browser test $bin::$name once"
        cargo test --locked --test "$bin" -- --exact "$name"
    done <<< "$failed"
fi
rm -f "$test_log"

fuzz_seconds="${FUZZ_SECONDS:-20}"
if [ "$fuzz_seconds" -gt 0 ]; then
    step "fuzz targets, ${fuzz_seconds}s each"
    command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
    # cargo-fuzz needs unstable compiler flags; the machine has the stable toolchain only.
    export RUSTC_BOOTSTRAP=1
    (
        cd fuzz
        cargo fuzz build -O
        for target in $(cargo fuzz list); do
            # Seed the SDP parser with the real offers of the fixtures.
            corpus=()
            if [ "$target" = sdp_parse ]; then
                mkdir -p corpus/sdp_parse
                corpus=(corpus/sdp_parse ../tests/fixtures/sdp)
            fi
            cargo fuzz run -O "$target" "${corpus[@]}" -- -max_total_time="$fuzz_seconds" 2>&1 \
                | grep -E '^(Done|INFO: Running with)|ERROR|panicked|SUMMARY' || true
            [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "fuzz target $target failed"; exit 1; }
        done
    )
fi

step "all checks passed"
