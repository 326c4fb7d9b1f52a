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
    {
        use std::os::unix::fs::PermissionsExt;
        let tmp = std::fs::metadata(mount.join("tmp")).unwrap();
        assert_eq!(
            tmp.permissions().mode() & 0o7777,
            0o1777,
            "/tmp must be world-writable and sticky"
        );
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

    // OpenTofu works from the image as the image's user: init from the
    // image's provider mirror (offline), then an apply that starts the
    // provider plugin (a Unix socket under TMPDIR).
    let ws = e.dir.join("image-workspace");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(
        ws.join("main.tf"),
        "terraform {\n  required_providers {\n    random = { source = \"hashicorp/random\" }\n  }\n}\nresource \"random_id\" \"x\" { byte_length = 4 }\noutput \"id\" { value = random_id.x.hex }\n",
    )
    .unwrap();
    std::fs::write(
        ws.join("cli.tfrc"),
        "provider_installation {\n  filesystem_mirror {\n    path = \"/usr/share/mahler/providers\"\n  }\n}\n",
    )
    .unwrap();
    buildah(&[
        "copy",
        "--chown",
        "65532:65532",
        &container,
        ws.to_str().unwrap(),
        "/var/lib/mahler/ws",
    ]);
    let tofu = |args: &[&str]| {
        let mut all = vec![
            "run",
            "--isolation",
            "chroot",
            "--workingdir",
            "/var/lib/mahler/ws",
            "-e",
            "TF_CLI_CONFIG_FILE=/var/lib/mahler/ws/cli.tfrc",
            "-e",
            "TMPDIR=/tmp",
            &container,
            "--",
            "/usr/local/bin/tofu",
        ];
        all.extend_from_slice(args);
        buildah(&all)
    };
    tofu(&["init", "-input=false", "-no-color"]);
    let applied = tofu(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    assert!(
        applied.contains("Apply complete! Resources: 1 added"),
        "{applied}"
    );

    buildah(&["rm", &container]);
    buildah(&["rmi", &tag]);
}
