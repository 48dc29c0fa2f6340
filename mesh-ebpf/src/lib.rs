//! Empty on purpose: this library target lets `mesh-agent` list `mesh-ebpf` as a
//! build-dependency, so cargo rebuilds the agent when the programs change. The programs are
//! the `mesh` binary (`src/main.rs`), built for `bpfel-unknown-none`.
#![no_std]
