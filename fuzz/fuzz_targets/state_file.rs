//! The agent's static state file (`--state-file`), compiled for a node.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mesh_agent::untrusted::state_file(text);
    }
});
