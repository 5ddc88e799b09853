//! See `tollgate::metadata::invariants::policy` (the proxy's own sources are compiled in as they
//! are, without the agent's eBPF build).
#![no_main]
#![allow(dead_code, unused_imports)]

#[path = "../../userspace/src/metadata/invariants.rs"]
mod invariants;
#[path = "../../userspace/src/metadata/policy.rs"]
mod policy;
#[path = "../../userspace/src/metadata/rules.rs"]
mod rules;
#[path = "../../userspace/src/metadata/target.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| invariants::policy(data));
