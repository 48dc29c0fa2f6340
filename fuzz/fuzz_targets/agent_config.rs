//! The agent's command line: the input is its arguments, separated by NUL bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let args: Vec<String> = data.split(|b| *b == 0).take(64).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let _ = mesh_agent::untrusted::config(&args);
});
