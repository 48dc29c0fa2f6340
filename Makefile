# The two commands a newcomer needs (README.md). Each first installs what is missing
# (xtask/bootstrap.sh: Debian packages, the pinned Rust toolchain, bpf-linker, bpffs), then
# hands over to `cargo xtask`. Run as root: the lab uses network namespaces and eBPF.

export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: demo test

## demo: build, bring up a local lab, run the mesh and show what a client sees
## (KEEP=1: then keep it running, with a live service map in the browser, until Ctrl-C)
demo:
	@./xtask/bootstrap.sh
	@cargo xtask demo $(if $(KEEP),--keep)

## test: the whole suite (fmt, clippy, unit and privileged end-to-end tests), as CI runs it
test:
	@./xtask/bootstrap.sh
	@cargo xtask test
