//! Link the guest as a static, non-PIE ELF laid out by `link.ld`.
//!
//! The link arguments live here (not in `.cargo/config.toml`) so that
//! `cargo build --manifest-path /path/to/guest/Cargo.toml` works from any
//! working directory.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let script = format!("{dir}/link.ld");
    println!("cargo:rerun-if-changed={script}");
    println!("cargo:rerun-if-changed=build.rs");
    for arg in [
        format!("-T{script}"),
        "-nostartfiles".into(),
        "-nostdlib".into(),
        "-static".into(),
        "-no-pie".into(),
        "-Wl,--build-id=none".into(),
        "-Wl,--no-dynamic-linker".into(),
        "-Wl,--gc-sections".into(),
        "-Wl,-z,noexecstack".into(),
        "-Wl,-z,max-page-size=4096".into(),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
