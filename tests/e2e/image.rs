//! The operator image, built for real by hack/image.sh (`make image` uses
//! the release binary; this test the suite's debug build, stripped) and
//! inspected: user, entrypoint, environment, the files present, and the
//! binaries run from the image's root filesystem.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::harness::{env, shared};

fn buildah(args: &[&str]) -> String {
    let out = Command::new("buildah")
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .expect("buildah is not installed: `apt-get install buildah` (docs/install.md)");
    assert!(
        out.status.success(),
        "buildah {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn operator_image_is_minimal_non_root_and_runs() {
    let _g = shared().await;
    let e = env();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tag = format!("localhost/mahler-operator:e2e-{}", std::process::id());
    let out = Command::new(root.join("hack/image.sh"))
        .arg(env!("CARGO_BIN_EXE_mahler-operator"))
        .arg(&tag)
        .env("MAHLER_IMAGE_CONTEXT", e.dir.join("image-context"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hack/image.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let info: Value =
        serde_json::from_str(&buildah(&["inspect", "--type", "image", &tag])).unwrap();
    let config = &info["OCIv1"]["config"];
    assert_eq!(config["User"], "65532:65532", "non-root: {config}");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/mahler-operator"])
    );
    let envs: Vec<&str> = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for want in [
        "MAHLER_TOFU=/usr/local/bin/tofu",
        "MAHLER_PROVIDER_MIRROR=/usr/share/mahler/providers",
        "HOME=/var/lib/mahler",
    ] {
        assert!(envs.contains(&want), "{want} not in {envs:?}");
    }
    let layers = info["OCIv1"]["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .len();
    assert!(
        layers > 3,
        "the operator should sit in a layer of its own: {layers} layers"
    );

    let container = buildah(&["from", "--quiet", &tag]).trim().to_string();
    let mount = PathBuf::from(buildah(&["mount", &container]).trim());
    let present = |p: &str| mount.join(p.trim_start_matches('/')).exists();
    for file in [
        "/usr/local/bin/mahler-operator",
        "/usr/local/bin/tofu",
        "/usr/bin/git",
        "/usr/lib/git-core/git-remote-https",
        "/etc/ssl/certs/ca-certificates.crt",
        "/lib64/ld-linux-x86-64.so.2",
        "/usr/share/mahler/providers/registry.opentofu.org/hashicorp/random",
        "/usr/share/mahler/providers/registry.opentofu.org/hashicorp/null",
        "/usr/share/mahler/providers/registry.opentofu.org/hashicorp/kubernetes",
        "/usr/share/mahler/providers/registry.terraform.io/hashicorp/kubernetes",
    ] {
        assert!(present(file), "{file} is missing from the image");
    }
    // Minimal: no shell, no package manager.
    for absent in ["/bin/sh", "/usr/bin/apt", "/usr/bin/dpkg", "/bin/bash"] {
        assert!(!present(absent), "{absent} should not be in the image");
    }
    let passwd = std::fs::read_to_string(mount.join("etc/passwd")).unwrap();
    assert!(passwd.contains(":65532:65532:"), "{passwd}");
    {
        use std::os::unix::fs::MetadataExt;
        let work = std::fs::metadata(mount.join("var/lib/mahler")).unwrap();
        assert_eq!(work.uid(), 65532, "/var/lib/mahler must be the operator's");
    }
    buildah(&["umount", &container]);

    // Run from the image's root filesystem, as the image's user.
    let run = |args: &[&str]| {
        let mut all = vec!["run", "--isolation", "chroot", &container, "--"];
        all.extend_from_slice(args);
        buildah(&all)
    };
    assert_eq!(
        run(&["/usr/local/bin/mahler-operator", "--version"]).trim(),
        format!("mahler-operator {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(run(&["/usr/local/bin/tofu", "version"]).contains("OpenTofu v1.12"));
    assert!(run(&["/usr/bin/git", "--version"]).starts_with("git version"));

    buildah(&["rm", &container]);
    buildah(&["rmi", &tag]);
}
