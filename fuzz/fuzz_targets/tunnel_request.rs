//! A tunnel's CONNECT, as the receiving agent judges it after the handshake: the first three
//! bytes are the lengths of the server name, the target and the `Forwarded` value; then
//! those three, and the client's leaf certificate (DER).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [name_len, uri_len, forwarded_len, rest @ ..] = data else { return };
    let (name, rest) = rest.split_at(usize::from(*name_len).min(rest.len()));
    let (uri, rest) = rest.split_at(usize::from(*uri_len).min(rest.len()));
    let (forwarded, leaf) = rest.split_at(usize::from(*forwarded_len).min(rest.len()));
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let _ = mesh_agent::untrusted::tunnel_request(leaf, &text(name), &text(uri), &text(forwarded));
});
