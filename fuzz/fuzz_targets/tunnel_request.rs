//! A tunnel's CONNECT, as the receiving agent judges it after the handshake: the first two
//! bytes are the lengths of the server name and the target; then the name, the target, and
//! the client's leaf certificate (DER).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [name_len, uri_len, rest @ ..] = data else { return };
    let (name_len, uri_len) = (usize::from(*name_len).min(rest.len()), usize::from(*uri_len));
    let (name, rest) = rest.split_at(name_len);
    let (uri, leaf) = rest.split_at(uri_len.min(rest.len()));
    let _ = mesh_agent::untrusted::tunnel_request(leaf, &String::from_utf8_lossy(name), &String::from_utf8_lossy(uri));
});
