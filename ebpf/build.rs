//! Compiles the C eBPF programs under `src/bpf/` with clang-16 and
//! generates their libbpf-rs skeletons into `OUT_DIR`.

use std::env;
use std::fs;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

/// The programs to build; each `src/bpf/<name>.bpf.c` becomes `<name>.skel.rs`.
const PROGRAMS: &[&str] = &["sock_lb", "sock_destroy", "nodeport"];

/// Writes `vmlinux.h` (the kernel's types, for programs that reach into
/// kernel structures) into `out_dir` from the running kernel's BTF.
fn vmlinux_header(out_dir: &std::path::Path) {
    let bpftool = env::var("BERTH_BPFTOOL").unwrap_or_else(|_| "bpftool".to_string());
    let btf =
        env::var("BERTH_VMLINUX_BTF").unwrap_or_else(|_| "/sys/kernel/btf/vmlinux".to_string());
    println!("cargo:rerun-if-env-changed=BERTH_BPFTOOL");
    println!("cargo:rerun-if-env-changed=BERTH_VMLINUX_BTF");
    let out = std::process::Command::new(&bpftool)
        .args(["btf", "dump", "file", &btf, "format", "c"])
        .output()
        .unwrap_or_else(|e| panic!("running {bpftool} (install it with `cargo xtask deps`): {e}"));
    assert!(
        out.status.success(),
        "{bpftool} could not dump {btf}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(out_dir.join("vmlinux.h"), out.stdout).expect("write vmlinux.h");
}

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var("BERTH_CLANG").unwrap_or_else(|_| "clang-16".to_string());
    println!("cargo:rerun-if-env-changed=BERTH_CLANG");
    // clang-16 finds <asm/types.h> only in the multiarch include directory.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let multiarch_include = format!("-I/usr/include/{arch}-linux-gnu");
    vmlinux_header(&out_dir);
    let out_include = format!("-I{}", out_dir.display());
    let target_arch = match arch.as_str() {
        "x86_64" => "-D__TARGET_ARCH_x86",
        "aarch64" => "-D__TARGET_ARCH_arm64",
        _ => "-D__TARGET_ARCH_unknown",
    };

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
                out_include.as_str(),
                target_arch,
                "-Wall",
                "-Werror",
            ])
            .build_and_generate(&skel)
            .unwrap_or_else(|e| {
                panic!("building {source} with {clang} failed (install it with `cargo xtask deps`): {e:#}")
            });
    }
}
