//! TC (TCX) ingress of the node's external interfaces: services reached from outside
//! ([`crate::nodeport`]). Attached only while the node has such frontends.

use aya_ebpf::{macros::classifier, programs::TcContext};

use crate::nodeport;

#[classifier]
fn mesh_from_netdev(ctx: TcContext) -> i32 {
    nodeport::from_netdev(&ctx)
}
