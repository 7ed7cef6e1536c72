//! What the engine's benchmark programs share: their arguments as `cargo bench` passes
//! them.

/// The program's arguments without the `--bench` cargo adds, and whether `--test` was
/// among them (the smoke run `cargo bench --workspace -- --test`: run a tiny
/// configuration, fast).
pub fn args() -> (Vec<String>, bool) {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();
    let smoke = args.iter().any(|arg| arg == "--test");
    (
        args.into_iter().filter(|arg| arg != "--test").collect(),
        smoke,
    )
}

/// Where a benchmark keeps its ledger: `target/NAME` in the workspace, emptied first;
/// a temporary directory for the smoke run (kept alive by the returned guard).
pub fn data_dir(
    name: &str,
    smoke: bool,
) -> std::io::Result<(std::path::PathBuf, Option<tempfile::TempDir>)> {
    if smoke {
        let temp = tempfile::tempdir()?;
        return Ok((temp.path().to_path_buf(), Some(temp)));
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((dir, None))
}
