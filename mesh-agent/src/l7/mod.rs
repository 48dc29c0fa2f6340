//! Layer 7 for the Services that ask for it (Gateway API routes for the mesh). So far: the
//! route table (`routes`), which decides the rule and backend of a request. The proxy that
//! uses it, and the kernel's redirect of those Services' connections to it, come next.

pub mod filters;
pub mod proxy;
pub mod routes;
