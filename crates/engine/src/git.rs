//! Git module sources: the real `git` binary fetches a ref (shallow) into a
//! per-repository cache and checks the commit out once into
//! `<workdir>/git-trees/<commit>`, which workspaces then read like a local
//! module. The commit, not the ref, names a module version.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::process::Command;

use mahler_api::GitModule;
use mahler_core::terraform::workspace;

/// Why a git module source could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("git {command} timed out after {}s", TIMEOUT.as_secs())]
    TimedOut { command: String },
    /// git ran and failed; its stderr, one line.
    #[error("git {command}: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("cannot prepare {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot move the checkout of {commit} into place")]
    Checkout { commit: String },
    #[error("spec.module.git.path: {path} is not a directory at commit {commit}")]
    NoSuchPath { path: String, commit: String },
}

const TIMEOUT: Duration = Duration::from_secs(120);

/// Where checked-out commits live.
pub fn trees(workdir: &Path) -> PathBuf {
    workdir.join("git-trees")
}

async fn git(dir: &Path, args: &[&str]) -> Result<String, GitError> {
    let out = tokio::time::timeout(
        TIMEOUT,
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| GitError::TimedOut {
        command: args[0].to_string(),
    })?
    .map_err(GitError::Spawn)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(GitError::Failed {
            command: args[0].to_string(),
            stderr: err
                .lines()
                .filter(|l| !l.trim().is_empty())
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Fetches `src.ref` and makes sure its commit is checked out under
/// [`trees`]; returns the commit.
pub async fn fetch(workdir: &Path, src: &GitModule) -> Result<String, GitError> {
    let key = workspace::hex(&Sha256::digest(src.url.as_bytes()))[..16].to_string();
    let repo = workdir.join("git").join(key);
    if !repo.join("HEAD").exists() {
        std::fs::create_dir_all(&repo).map_err(|source| GitError::Io {
            path: repo.clone(),
            source,
        })?;
        git(&repo, &["init", "-q", "--bare"]).await?;
    }
    let r#ref = src.r#ref.as_deref().unwrap_or("HEAD");
    git(&repo, &["fetch", "-q", "--depth", "1", &src.url, r#ref]).await?;
    let commit = git(&repo, &["rev-parse", "FETCH_HEAD^{commit}"]).await?;
    let tree = trees(workdir).join(&commit);
    if !tree.is_dir() {
        let tmp = trees(workdir).join(format!("{commit}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|source| GitError::Io {
            path: tmp.clone(),
            source,
        })?;
        let work_tree = format!("--work-tree={}", tmp.display());
        git(
            &repo,
            &[&work_tree, "checkout", "-q", "-f", &commit, "--", "."],
        )
        .await?;
        if std::fs::rename(&tmp, &tree).is_err() && !tree.is_dir() {
            return Err(GitError::Checkout { commit });
        }
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if let Some(path) = &src.path
        && !tree.join(path).is_dir()
    {
        return Err(GitError::NoSuchPath {
            path: path.clone(),
            commit,
        });
    }
    Ok(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, script: &str) {
        let ok = std::process::Command::new("sh")
            .args(["-c", script])
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.org")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.org")
            .status()
            .unwrap()
            .success();
        assert!(ok, "{script}");
    }

    #[tokio::test]
    async fn fetches_a_ref_and_checks_out_its_commit() {
        let origin = tempfile::tempdir().unwrap();
        sh(
            origin.path(),
            "git init -q -b main . && mkdir -p mod && echo 'output \"x\" { value = 1 }' > mod/main.tf && git add . && git commit -qm one",
        );
        let work = tempfile::tempdir().unwrap();
        let src = GitModule {
            url: format!("file://{}", origin.path().display()),
            r#ref: Some("main".into()),
            path: Some("mod".into()),
        };
        let first = fetch(work.path(), &src).await.unwrap();
        assert!(
            trees(work.path())
                .join(&first)
                .join("mod/main.tf")
                .is_file()
        );
        // Same ref, no new commit: same version.
        assert_eq!(fetch(work.path(), &src).await.unwrap(), first);
        // The branch moves: a new version.
        sh(
            origin.path(),
            "echo '# two' >> mod/main.tf && git commit -qam two",
        );
        let second = fetch(work.path(), &src).await.unwrap();
        assert_ne!(second, first);
        let missing = GitModule {
            path: Some("nope".into()),
            ..src.clone()
        };
        assert!(
            fetch(work.path(), &missing)
                .await
                .unwrap_err()
                .to_string()
                .contains("spec.module.git.path")
        );
        let bad_ref = GitModule {
            r#ref: Some("no-such-branch".into()),
            ..src
        };
        assert!(
            fetch(work.path(), &bad_ref)
                .await
                .unwrap_err()
                .to_string()
                .starts_with("git fetch")
        );
    }
}
