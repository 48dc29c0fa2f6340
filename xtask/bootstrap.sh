#!/usr/bin/env bash
# Installs what building and running the mesh needs on a Debian 12 machine, and nothing that
# is already there. Called by the Makefile before any cargo command (cargo cannot start while
# the pinned toolchain is missing: RUSTUP_AUTO_INSTALL=0). Safe to run again: it only says
# "ok" for what it finds.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$here/rust-toolchain.toml")
bpf_linker_version=0.13.0
cargo_deny_version=0.20.2
kubernetes_validate_version=1.34.1
grpcio_tools_version=1.76.0
llvm_version=22
# Debian packages: LLVM 22 for bpf-linker; iproute2 for the lab; protoc and protobuf's
# well-known types for the APIs;
# iptables and nftables for the service-lb benchmark (kube-proxy's rules as the baseline);
# iperf3 for the policy benchmark's throughput; ethtool for the north-south benchmark (a NIC-like
# receive path on the lab node's veth).
apt_packages=(llvm-${llvm_version}-dev libpolly-${llvm_version}-dev iproute2 protobuf-compiler libprotobuf-dev iptables nftables iperf3 ethtool buildah podman runc chromium)

say() { printf '[bootstrap] %s\n' "$*"; }
die() { printf '[bootstrap] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: installing Debian packages and running the lab (network namespaces, eBPF) need it"
command -v rustup >/dev/null || die "rustup is not installed; install rustup first, then run this again"

# 1. Debian packages.
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "ok: Debian packages ${apt_packages[*]}"
fi

# 2. The pinned Rust toolchain, with rust-src for the eBPF build.
if rustup toolchain list | grep -q "^${toolchain}-"; then
  say "ok: Rust ${toolchain}"
else
  say "installing Rust ${toolchain} (rustup, components rust-src clippy rustfmt)"
  rustup toolchain install "$toolchain" --profile minimal -c rust-src -c clippy -c rustfmt --no-self-update
fi
for c in rust-src clippy rustfmt; do
  if ! rustup component list --toolchain "$toolchain" --installed 2>/dev/null | grep -q "^${c}"; then
    say "installing Rust component ${c} for ${toolchain}"
    rustup component add --toolchain "$toolchain" "$c"
  fi
done

# 3. bpf-linker, built against Debian's LLVM 22.
if command -v bpf-linker >/dev/null && bpf-linker --version 2>/dev/null | grep -q "$bpf_linker_version"; then
  say "ok: bpf-linker ${bpf_linker_version}"
else
  say "installing bpf-linker ${bpf_linker_version} on LLVM ${llvm_version} (cargo install, about 3 minutes)"
  LLVM_PREFIX=/usr/lib/llvm-${llvm_version} PATH=/usr/lib/llvm-${llvm_version}/bin:$PATH \
    cargo +"$toolchain" install bpf-linker --version "$bpf_linker_version" --locked \
      --no-default-features --features llvm-${llvm_version}
fi

# 4. kubernetes-validate (PyPI): the tests check deploy/ against the Kubernetes schemas.
if command -v kubernetes-validate >/dev/null && kubernetes-validate --version 2>/dev/null | grep -q "$kubernetes_validate_version"; then
  say "ok: kubernetes-validate ${kubernetes_validate_version}"
else
  command -v python3 >/dev/null || die "python3 (with pip) is needed to install kubernetes-validate"
  say "installing kubernetes-validate ${kubernetes_validate_version} (pip)"
  python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==${kubernetes_validate_version}"
  command -v pyenv >/dev/null && pyenv rehash || true
fi

# 5. grpcio-tools (PyPI): the flows test generates a Python client from the Observer .proto
#    files and reads flows with it, as a client that is not Rust.
if python3 -c "import grpc_tools, grpc; assert grpc.__version__ == '${grpcio_tools_version}'" 2>/dev/null; then
  say "ok: grpcio-tools ${grpcio_tools_version}"
else
  command -v python3 >/dev/null || die "python3 (with pip) is needed to install grpcio-tools"
  say "installing grpcio-tools ${grpcio_tools_version} and grpcio (pip)"
  python3 -m pip install --quiet --disable-pip-version-check "grpcio-tools==${grpcio_tools_version}" "grpcio==${grpcio_tools_version}"
fi

# 6. cargo-deny: the test command checks the dependencies' licenses, duplicates and sources.
if command -v cargo-deny >/dev/null && cargo-deny --version 2>/dev/null | grep -q "$cargo_deny_version"; then
  say "ok: cargo-deny ${cargo_deny_version}"
else
  say "installing cargo-deny ${cargo_deny_version} (cargo install, about 4 minutes)"
  cargo +"$toolchain" install cargo-deny --version "$cargo_deny_version" --locked
fi

# 7. nginx, the l7 benchmark's baseline (a per-node reverse proxy), unpacked from Debian's
# package into target/tools/nginx rather than installed: installing it would start a server
# on the host's port 80, and the benchmark runs its own, in the lab's namespaces only.
nginx_dir="$here/target/tools/nginx"
if [ -x "$nginx_dir/usr/sbin/nginx" ]; then
  say "ok: nginx at $nginx_dir"
else
  say "unpacking Debian's nginx into $nginx_dir (not installed: no service is started)"
  download=$(mktemp -d)
  chmod 777 "$download"
  (cd "$download" && apt-get download -qq nginx 2>/dev/null)
  mkdir -p "$nginx_dir"
  dpkg -x "$download"/nginx_*.deb "$nginx_dir"
  rm -rf "$download"
fi

# 8. kubectl, whose built-in kustomize renders deploy/kustomize for the tests. One already on
# the machine is used (any since 1.14 has `kubectl kustomize`); else Debian's kubernetes-client.
if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
  say "ok: kubectl ($(command -v kubectl))"
else
  say "installing Debian's kubernetes-client (kubectl, for kubectl kustomize)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
fi

# 9. bpffs, where the agent pins its maps and links.
if mount | grep -q ' /sys/fs/bpf type bpf'; then
  say "ok: bpffs at /sys/fs/bpf"
else
  say "mounting bpffs at /sys/fs/bpf"
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf
fi
