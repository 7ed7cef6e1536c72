//! What the engine's benchmark programs share: where they keep their ledger.
//! Their arguments come from `tally_testkit::bench_arguments`.

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
