//! The CLI's one error type: a one-line message, an optional hint saying
//! what to do, and the documented exit code. Every failure, from the
//! kubeconfig to an admission policy, ends up here; nothing panics and no
//! raw JSON body or backtrace reaches the user.

use std::process::ExitCode;

/// The documented exit codes (docs/cli.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Failure = 1,
    Usage = 2,
    NotFound = 3,
    NotReady = 4,
    Forbidden = 5,
}

#[derive(Debug)]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
    pub hint: Option<String>,
}

pub type Result<T, E = CliError> = std::result::Result<T, E>;

impl CliError {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        CliError {
            exit,
            message: message.into(),
            hint: None,
        }
    }

    pub fn failure(message: impl Into<String>) -> Self {
        Self::new(Exit::Failure, message)
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Exit::NotFound, message)
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn code(&self) -> ExitCode {
        ExitCode::from(self.exit as u8)
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What the API server said, in one line: the Status message, with the
/// admission machinery's preamble dropped ("admission webhook ... denied the
/// request:", "ValidatingAdmissionPolicy 'x' with binding 'y' denied request:").
pub fn api_message(status: &kube::core::Status) -> String {
    let message = status.message.trim();
    // Not a Kubernetes Status (a proxy's HTML page): say what it was, not its body.
    if status.reason == "Failed to parse error data"
        && (message.starts_with('<') || message.len() > 200)
    {
        return format!(
            "HTTP {} with a response that is not from the Kubernetes API (a proxy in between?)",
            status.code
        );
    }
    let message = match message.find("denied request: ") {
        Some(i) if message.contains("ValidatingAdmissionPolicy") => {
            &message[i + "denied request: ".len()..]
        }
        _ => message,
    };
    message.lines().next().unwrap_or_default().to_string()
}

/// Turns a kube error into a one-line CliError with its exit code. `what`
/// names the object or request ("Service shop-staging/api").
pub fn from_kube(err: kube::Error, what: &str, cluster: &str) -> CliError {
    match err {
        kube::Error::Api(status) => {
            let message = api_message(&status);
            match status.code {
                401 => CliError::new(
                    Exit::Forbidden,
                    format!("{cluster}: not logged in ({message})"),
                )
                .hint("your credentials were refused: refresh the kubeconfig's token or certificate"),
                403 => CliError::new(Exit::Forbidden, message).hint(
                    "ask an owner of the environment or a cluster admin for access; `kubectl auth can-i --list` shows what you may do",
                ),
                404 if status.details.as_ref().is_none_or(|d| d.name.is_empty()) => {
                    // The resource type itself is missing, not an object.
                    CliError::failure(format!(
                        "{cluster} does not serve Mahler's API ({what}: {message})"
                    ))
                    .hint("install Mahler first: helm install mahler charts/mahler -n mahler-system --create-namespace (docs/install.md)")
                }
                404 => CliError::not_found(format!("{what} not found")),
                409 => CliError::failure(message),
                422 | 400 => CliError::failure(format!("{what}: {message}")),
                _ => CliError::failure(format!("{what}: {message}")),
            }
        }
        kube::Error::InferConfig(e) => CliError::failure(format!("no cluster configured: {}", chain(&e)))
            .hint("set KUBECONFIG or --kubeconfig, or create ~/.kube/config (`make run` prints the local cluster's)"),
        kube::Error::InferKubeconfig(e) => {
            CliError::failure(format!("kubeconfig: {}", chain(&e)))
        }
        kube::Error::Auth(e) => CliError::new(Exit::Forbidden, format!("{cluster}: credentials: {}", chain(&e)))
            .hint("check the kubeconfig's user (token, certificate or exec plugin)"),
        e @ (kube::Error::HyperError(_) | kube::Error::Service(_)) => CliError::failure(format!(
            "cannot reach the cluster at {cluster}: {}",
            root_cause(&e)
        ))
        .hint("is it running? `make run` starts the local one; `mahler config view` shows which cluster is used"),
        e => CliError::failure(format!("{what}: {}", chain(&e))),
    }
}

/// A wait's watch error in one line, with the exit code of its API error.
pub fn from_wait(err: kube::runtime::wait::Error, what: &str) -> CliError {
    use kube::runtime::watcher::Error as W;
    match err {
        kube::runtime::wait::Error::ProbeFailed(
            W::InitialListFailed(k) | W::WatchStartFailed(k) | W::WatchFailed(k),
        ) => from_kube(k, what, "the cluster"),
        kube::runtime::wait::Error::ProbeFailed(W::WatchError(s)) => {
            CliError::failure(format!("{what}: {}", api_message(&s)))
        }
        other => CliError::failure(format!("{what}: {}", chain(&other))),
    }
}

/// An error and its sources, joined with ": " (each message once).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![err.to_string()];
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// The innermost cause ("Connection refused (os error 111)").
fn root_cause(err: &dyn std::error::Error) -> String {
    let mut last = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_preambles_are_dropped() {
        let status = kube::core::Status::failure(
            "services.mahler.dev \"db\" is forbidden: ValidatingAdmissionPolicy 'mahler-plan-approval' with binding 'mahler-plan-approval' denied request: mahler.dev/approved-by: must be the requesting user (bob)",
            "Invalid",
        );
        assert_eq!(
            api_message(&status),
            "mahler.dev/approved-by: must be the requesting user (bob)"
        );
    }
}
