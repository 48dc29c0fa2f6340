//! Rebuilds the programs when `bpf-linker` changes: cargo does not know the linker is an input.

fn main() {
    println!("cargo::rerun-if-env-changed=PATH");
    let Some(path) = std::env::var_os("PATH") else { return };
    if let Some(linker) = std::env::split_paths(&path).map(|dir| dir.join("bpf-linker")).find(|p| p.is_file()) {
        println!("cargo::rerun-if-changed={}", linker.display());
    }
}
