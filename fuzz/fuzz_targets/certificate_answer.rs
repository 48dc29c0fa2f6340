//! The workload CA's answer to a certificate request, as the agent checks it. The first byte
//! chooses: the rest as the protobuf answer, or as the leaf's DER inside a well-formed answer
//! (so the fuzzer reaches the X.509 parser without having to find base64 first).
#![no_main]

/// A P-256 public key (uncompressed point) the answers are checked against.
const KEY: [u8; 65] = [4; 65];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        let _ = mesh_agent::untrusted::certificate_answer(rest, &KEY);
    } else {
        let leaf = pem::encode(&pem::Pem::new("CERTIFICATE", rest.to_vec()));
        let answer = mesh_common::istio_ca::IstioCertificateResponse { cert_chain: vec![leaf.clone(), leaf] };
        let _ = mesh_agent::untrusted::certificate_answer(&prost::Message::encode_to_vec(&answer), &KEY);
    }
});
