//! An HTTP request a client pod sends to a Service with routes, as the L7 proxy takes it (and
//! as a pod's agent judges it by HTTP rules): the
//! first two bytes are the lengths of the method and the target; the rest is headers, one
//! `name:value` a line.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [method_len, target_len, rest @ ..] = data else { return };
    let (method, rest) = rest.split_at(usize::from(*method_len).min(rest.len()));
    let (target, headers) = rest.split_at(usize::from(*target_len).min(rest.len()));
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let headers = text(headers);
    let headers: Vec<(&str, &str)> = headers.lines().filter_map(|line| line.split_once(':')).collect();
    let _ = mesh_agent::untrusted::http_request(&text(method), &text(target), &headers);
    let _ = mesh_agent::untrusted::judged_request(&text(method), &text(target), &headers);
});
