//! Manifests of every kind local mode reads (YAML and JSON, multi-document, the CRDs too),
//! from text to the model agents receive.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The operator reads files as UTF-8 text (anything else is refused when read).
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mesh_operator::local_dir::model_of_text(text);
    }
});
