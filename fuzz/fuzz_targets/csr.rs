//! Certificate signing requests, as the operator's workload CA reads them from any caller of
//! Istio's certificate API. The first byte chooses: the rest as the PEM text, or as the DER
//! inside well-formed PEM (so the fuzzer reaches the parser without having to find base64).
#![no_main]

use std::sync::OnceLock;

use mesh_operator::workload_ca::WorkloadCa;

fn ca() -> &'static WorkloadCa {
    static CA: OnceLock<WorkloadCa> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("mesh-fuzz-ca-{}", std::process::id()));
        let ca = WorkloadCa::open(&dir, Default::default(), std::time::Duration::from_secs(3600)).expect("a CA");
        // The CA holds its root in memory; its files are not needed any more.
        let _ = std::fs::remove_dir_all(&dir);
        ca
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        if let Ok(text) = std::str::from_utf8(rest) {
            let _ = ca().read_csr(text);
        }
    } else {
        let _ = ca().read_csr(&pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", rest.to_vec())));
    }
});
