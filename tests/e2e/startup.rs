//! Running the operator by hand: every start-up failure is one line saying
//! what to do, and the process exits at once (no retry loop, no dump).

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{env, shared};

/// Runs the operator with `envs` until it exits (at most 30 s); returns its
/// exit code and its ERROR lines. Every output line must be a log line (no
/// multi-line dumps).
fn run_operator(envs: &[(&str, &str)]) -> (Option<i32>, Vec<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mahler-operator"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", env().dir.join("startup-home"))
        .env("MAHLER_METRICS_ADDR", "127.0.0.1:0")
        .env("MAHLER_TERRAFORM_DISABLED", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start mahler-operator");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for line in text.lines() {
        assert!(
            line.starts_with("20"),
            "not a log line (a multi-line dump?): {line:?}\n{text}"
        );
    }
    let lines = text
        .lines()
        .filter(|l| l.contains(" ERROR "))
        .map(str::to_string)
        .collect();
    (code, lines)
}

fn assert_one_line(case: &str, (code, lines): (Option<i32>, Vec<String>), says: &str) {
    assert_eq!(
        code,
        Some(1),
        "{case}: should exit with 1 at once; output: {lines:#?}"
    );
    assert_eq!(lines.len(), 1, "{case}: one line, not {lines:#?}");
    assert!(
        lines[0].contains(says),
        "{case}: {:?} should say {says:?}",
        lines[0]
    );
    assert!(
        !lines[0].contains("Status {") && !lines[0].contains("ErrorResponse"),
        "{case}: a raw API error dump: {}",
        lines[0]
    );
}

#[tokio::test]
async fn start_up_failures_are_one_line_each() {
    let _g = shared().await;
    let e = env();
    let dir = e.dir.join("startup");
    std::fs::create_dir_all(&dir).unwrap();

    assert_one_line(
        "no cluster",
        run_operator(&[("KUBECONFIG", dir.join("missing").to_str().unwrap())]),
        "no Kubernetes cluster",
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let unreachable = dir.join("unreachable.kubeconfig");
    std::fs::write(
        &unreachable,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{port}'}}}}]\nusers: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: u}}}}]\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    assert_one_line(
        "cluster down",
        run_operator(&[("KUBECONFIG", unreachable.to_str().unwrap())]),
        "cannot reach the Kubernetes API",
    );

    // A ServiceAccount without the operator's ClusterRole.
    e.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: startup-test}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: nobody, namespace: startup-test}\n");
    let nobody = dir.join("nobody.kubeconfig");
    crate::harness::service_account_kubeconfig(
        &e.kubectl,
        &e.kubeconfig,
        "startup-test",
        "nobody",
        &nobody,
    );
    assert_one_line(
        "no permission",
        run_operator(&[("KUBECONFIG", nobody.to_str().unwrap())]),
        "refused the operator",
    );

    // Leader election asked for, by hand (a user's kubeconfig), in a
    // namespace that does not exist.
    assert_one_line(
        "no namespace for the Lease",
        run_operator(&[
            ("KUBECONFIG", e.kubeconfig.to_str().unwrap()),
            ("MAHLER_LEADER_ELECT", "true"),
            ("POD_NAMESPACE", "no-such-namespace"),
        ]),
        "leader election needs the namespace \"no-such-namespace\"",
    );
    e.kubectl(&["delete", "namespace", "startup-test", "--wait=false"]);
}
