//! Declares the `loom` cfg, set by `RUSTFLAGS="--cfg loom"` for the model-checking test.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
}
