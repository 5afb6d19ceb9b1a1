# Sourced by the SDK test scripts from the repository root: builds the drover binary the tests
# check frames and drivers with, and exports its absolute path as DROVER_BIN.
cargo build -q --locked -p drover
DROVER_BIN="$(cd "${CARGO_TARGET_DIR:-target}/debug" && pwd)/drover"
export DROVER_BIN
