//! mesh-operator: the control plane. The foundation issue leaves it a placeholder; the
//! control-plane issue gives it the kube-rs controller, CRDs, identities and the state stream.

fn main() {
    eprintln!("mesh-operator: not implemented yet; the agent reads a static services file (see README.md)");
    std::process::exit(2);
}
