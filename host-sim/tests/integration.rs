//! host-sim integration tests: one binary (convention 9). Modules come from
//! `bash host-sim/build-test-modules.sh`.

mod common;
mod it;
