//! What the L7 proxy tells the flow log about one HTTP request: its line, the answer's code and
//! latency, the route that answered and the trace it belongs to. The request's flow and its
//! response's flow share one [`HttpExchange`].

/// One request and its answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpExchange {
    pub method: String,
    /// `http://<authority><path and query>`, the authority as the client sent it.
    pub url: String,
    /// "HTTP/1.1" or "HTTP/2" (Hubble's spelling).
    pub protocol: &'static str,
    /// The response's status (the proxy's own answer included).
    pub code: u16,
    /// From the request's head to the response's head.
    pub latency_ns: u64,
    /// The HTTPRoute (`namespace/name`) and rule (name, or index) that answered; empty when
    /// none did (not routed, or no rule matched).
    pub route: String,
    pub rule: String,
    /// The backend Service port the request went to (`namespace/name:port`); empty for the
    /// proxy's own answers.
    pub backend: String,
    /// The W3C trace id (32 lowercase hex digits) of the request's `traceparent`, if it had a
    /// valid one; empty otherwise.
    pub trace_id: String,
    /// The MeshPolicy rule that denied the request (HTTP rules, judged by the destination's
    /// agent); empty when it was not denied.
    pub denied_by: String,
}

impl HttpExchange {
    /// The path of `url` (without the query), as Hubble's `http_path` filter matches it.
    pub fn path(&self) -> &str {
        let after_scheme = self.url.split_once("://").map_or(self.url.as_str(), |(_, rest)| rest);
        let path = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
        path.split(['?', '#']).next().unwrap_or(path)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_path_leaves_out_authority_and_query() {
        let exchange = |url: &str| super::HttpExchange { url: url.to_owned(), ..Default::default() };
        assert_eq!(exchange("http://web:80/a/b?x=1").path(), "/a/b");
        assert_eq!(exchange("http://web").path(), "/");
        assert_eq!(exchange("http://10.96.0.30/").path(), "/");
        assert_eq!(exchange("http://web/p#frag").path(), "/p");
    }
}
