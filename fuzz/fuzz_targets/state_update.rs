//! State stream messages as an agent decodes and applies them. The input is up to four
//! messages separated by `0xfe 0xfd`, applied in turn, so updates after the first one meet a
//! model that already holds something.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut follower = mesh_agent::untrusted::Follower::default();
    for message in data.split(|b| *b == 0xfe).take(4) {
        let message = message.strip_prefix(&[0xfd]).unwrap_or(message);
        let _ = follower.apply(message);
    }
});
