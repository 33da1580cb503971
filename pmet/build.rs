//! Compiles `pmet-ebpf` for the BPF target and leaves the object in OUT_DIR,
//! where `src/collect/ebpf.rs` embeds it with `include_bytes_aligned!`.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // Builds that never load the kernel side (the fuzzer, docs) may skip
    // compiling it: leave an empty object where the loader expects one.
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1") {
        let out = std::env::var("OUT_DIR").context("OUT_DIR not set")?;
        std::fs::write(std::path::Path::new(&out).join("pmet-ebpf"), [])?;
        return Ok(());
    }
    // The BPF target needs `-Z build-std=core`. Rather than require a nightly
    // toolchain, build with the one compiling pmet and allow unstable flags for
    // that inner build only (aya-build reads this variable and passes it on).
    // SAFETY: the build script is single-threaded at this point.
    // CARGO_TERM_QUIET keeps the inner cargo's progress lines out of the
    // outer build's warnings; compiler diagnostics still come through.
    unsafe {
        std::env::set_var("RUSTC_BOOTSTRAP", "1");
        std::env::set_var("CARGO_TERM_QUIET", "true");
    }
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned());

    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("pmet has no parent directory"))?
        .join("pmet-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "pmet-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
    .context(
        "building the eBPF programs failed; `cargo xtask setup` installs what they need \
         (bpf-linker built against LLVM 22, and the rust-src component)",
    )
}
