//! Writes the CRDs to `crds/` (or prints them with `--stdout`).
//! `make crds` runs this; a test fails when the committed files are stale.

use std::{fs, path::PathBuf};

fn main() -> std::io::Result<()> {
    let stdout = std::env::args().any(|a| a == "--stdout");
    let dir = PathBuf::from(std::env::var("CRD_DIR").unwrap_or_else(|_| "crds".into()));
    for crd in mahler_api::all() {
        let yaml = mahler_api::to_yaml(&crd);
        if stdout {
            print!("{yaml}");
        } else {
            fs::create_dir_all(&dir)?;
            fs::write(dir.join(mahler_api::file_name(&crd)), yaml)?;
        }
    }
    Ok(())
}
