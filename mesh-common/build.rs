//! With the `user` feature, compiles the control-plane API (`proto/mesh/v1/state.proto`), the
//! agent's API (`agent.proto`), Hubble's Observer API (`flow.proto`, `observer.proto`) and
//! Istio's certificate API (`istio/ca.proto`) with tonic. The kernel side (no `user`) needs none of it, nor `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rerun-if-changed=proto");
    #[cfg(feature = "user")]
    tonic_prost_build::configure()
        // A model holds thousands of resources by value in a map: boxing the large, rarer
        // kinds keeps a Resource at the size of a Service (128 bytes, not 296).
        .boxed(".mesh.v1.Resource.kind.workload")
        .boxed(".mesh.v1.Resource.kind.network_policy")
        .boxed(".mesh.v1.Resource.kind.mesh_policy")
        .boxed(".mesh.v1.Resource.kind.peer_authentication")
        .boxed(".mesh.v1.Resource.kind.http_route")
        .boxed(".mesh.v1.Resource.kind.grpc_route")
        .compile_protos(
            &[
                "proto/mesh/v1/state.proto",
                "proto/mesh/v1/agent.proto",
                "proto/flow.proto",
                "proto/observer.proto",
                "proto/istio/ca.proto",
            ],
            // Debian's libprotobuf-dev holds the well-known types (google/protobuf/*.proto).
            &["proto", "/usr/include"],
        )?;
    Ok(())
}
