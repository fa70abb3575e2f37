//! Compiles the C eBPF programs under `src/bpf/` with clang-16 and
//! generates their libbpf-rs skeletons into `OUT_DIR`.

use std::env;
use std::fs;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

/// The programs to build; each `src/bpf/<name>.bpf.c` becomes `<name>.skel.rs`.
const PROGRAMS: &[&str] = &["sock_lb"];

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var("BERTH_CLANG").unwrap_or_else(|_| "clang-16".to_string());
    println!("cargo:rerun-if-env-changed=BERTH_CLANG");
    // clang-16 finds <asm/types.h> only in the multiarch include directory.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let multiarch_include = format!("-I/usr/include/{arch}-linux-gnu");

    // Rebuild when any C source or header changes, not only the entry points.
    for entry in fs::read_dir("src/bpf").expect("src/bpf exists") {
        let path = entry.expect("readable src/bpf entry").path();
        println!("cargo:rerun-if-changed={}", path.display());
    }

    for name in PROGRAMS {
        let source = format!("src/bpf/{name}.bpf.c");
        let skel = out_dir.join(format!("{name}.skel.rs"));
        SkeletonBuilder::new()
            .source(&source)
            .obj(out_dir.join(format!("{name}.bpf.o")))
            .clang(&clang)
            .clang_args([
                multiarch_include.as_str(),
                "-Isrc/bpf",
                "-Wall",
                "-Werror",
            ])
            .build_and_generate(&skel)
            .unwrap_or_else(|e| {
                panic!("building {source} with {clang} failed (install it with `cargo xtask deps`): {e:#}")
            });
    }
}
