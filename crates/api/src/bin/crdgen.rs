//! Writes the CRDs to `crds/` and to the Helm chart's `charts/mahler/crds/`
//! (or prints them with `--stdout`). `make crds` runs this; a test fails
//! when either committed copy is stale.

use std::{fs, path::PathBuf};

fn main() -> std::io::Result<()> {
    let stdout = std::env::args().any(|a| a == "--stdout");
    let dirs: Vec<PathBuf> = match std::env::var("CRD_DIR") {
        Ok(dir) => vec![dir.into()],
        Err(_) => vec!["crds".into(), "charts/mahler/crds".into()],
    };
    for crd in mahler_api::all() {
        let yaml = mahler_api::to_yaml(&crd);
        if stdout {
            print!("{yaml}");
            continue;
        }
        for dir in &dirs {
            fs::create_dir_all(dir)?;
            fs::write(dir.join(mahler_api::file_name(&crd)), &yaml)?;
        }
    }
    Ok(())
}
