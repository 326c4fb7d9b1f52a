//! The Terraform engine: real OpenTofu runs for template Services.
//!
//! A reconcile never waits for OpenTofu. It asks the engine to start a job
//! (plan, apply, drift check, destroy) for a workspace and returns; the job
//! runs in the background within a bounded number of parallel runs, and when
//! it ends the engine re-triggers that Service's reconcile, which takes the
//! result and writes status, Events and the outputs Secret. One job per
//! Service at a time; the state lock (a Lease) guards against anyone else.

pub mod git;
pub mod otelcol;
mod process;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use mahler_api::GitModule;
use mahler_api::terraform::{FailureReason, Operation, RunResult};
use mahler_core::terraform::job::{Note, NoteReason, RunFailure};
use mahler_core::terraform::{lock, outputs, plan, stream, workspace};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use git::GitError;
pub use mahler_core::terraform::job::{JobKind, JobResult, JobState, Outcome, OutputValue};
pub use mahler_core::terraform::workspace::{Backend, RenderError, Workspace};
use process::{Exit, Invocation, Output};

/// An error from the [`Cluster`] the controller hands in.
pub type ClusterError = Box<dyn std::error::Error + Send + Sync>;

/// The engine's one window on Kubernetes: a workspace backend's state
/// Secret and lock Lease. The controller implements it with its client; the
/// engine has none.
pub trait Cluster: Send + Sync + 'static {
    /// The raw `tfstate` of the backend's state Secret; `None` without one.
    fn state<'a>(
        &'a self,
        backend: &'a Backend,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, ClusterError>>;
    /// The backend's lock Lease, if it exists.
    fn lock<'a>(
        &'a self,
        backend: &'a Backend,
    ) -> BoxFuture<'a, Result<Option<Lease>, ClusterError>>;
    /// Releases an orphaned lock, only if it is still `lease` (its
    /// resourceVersion): [`lock::release_patch`].
    fn release_lock<'a>(
        &'a self,
        backend: &'a Backend,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<(), ClusterError>>;
}

/// What the engine reports about its runs (the controller's metrics).
pub trait RunObserver: Send + Sync + 'static {
    /// A `tofu` process was started (init, plan, apply, show, ...).
    fn process_started(&self);
    /// A job finished with this outcome label ([`Outcome::label`]).
    fn run_finished(&self, operation: Operation, outcome: &str, duration: Duration);
    /// A job starts (`true`) or stops (`false`) waiting for a run slot.
    fn slot_wait(&self, _waiting: bool) {}
}

/// Why the engine cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the working directory {}: {source}", path.display())]
    Workdir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the OpenTofu CLI configuration {}: {source}", path.display())]
    CliConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run {} ({source}); set MAHLER_TOFU to the OpenTofu binary", path.display())]
    Tofu {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} version -json printed no version: {source}", path.display())]
    Version {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Why a template's module did not validate.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("cannot write {}: {source}", path.display())]
    Workspace {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `tofu init` failed (providers, module sources).
    #[error("tofu init: {0}")]
    Init(String),
    /// The module's diagnostics, `file:line: summary`.
    #[error("{0}")]
    Invalid(String),
    /// OpenTofu could not run (its message, without the step: validating is the step).
    #[error("{}", .0.message)]
    Run(RunFailure),
}

/// How the engine runs OpenTofu.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The `tofu` binary.
    pub tofu: PathBuf,
    /// A filesystem mirror of providers (offline `tofu init`).
    pub provider_mirror: Option<PathBuf>,
    /// Where workspaces, git checkouts and the CLI config live.
    pub workdir: PathBuf,
    /// OpenTofu runs at once, operator-wide.
    pub parallel: usize,
    /// Longest a single command may run before it is interrupted.
    pub timeout: Duration,
    /// Kubeconfig the backend and the kubernetes provider use; `None` means
    /// in-cluster credentials.
    pub kubeconfig: Option<PathBuf>,
}

/// The Kubernetes identity one job's OpenTofu runs with (its backend and
/// the kubernetes provider): a short-lived ServiceAccount token, bound only
/// in the environment's namespace. `None` at [`Engine::start`] means the
/// engine's own credentials ([`EngineConfig::kubeconfig`]).
#[derive(Clone)]
pub struct Credentials {
    /// The API server URL.
    pub host: String,
    pub token: String,
    /// The API server's CA bundle (PEM); `None`: the system roots.
    pub ca_pem: Option<String>,
    /// Skip TLS verification (a kubeconfig with insecure-skip-tls-verify).
    pub insecure: bool,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("host", &self.host)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

enum Slot {
    Running { kind: JobKind, started: Timestamp },
    Done(Box<JobResult>),
}

pub struct Engine {
    cfg: EngineConfig,
    cluster: Arc<dyn Cluster>,
    slots: Semaphore,
    jobs: Mutex<HashMap<String, Slot>>,
    cancel: CancellationToken,
    /// OpenTofu and provider versions, part of every workspace hash.
    fingerprint: String,
    cli_config: Option<PathBuf>,
    hostname: String,
    observer: Arc<dyn RunObserver>,
    git_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The kubeconfig of each running job with credentials of its own, by
    /// workspace directory.
    credentials: Mutex<HashMap<PathBuf, PathBuf>>,
}

impl Engine {
    /// Prepares the working directory, the CLI configuration (mirror and
    /// providers linked from it) and the fingerprint. Fails when `tofu` cannot run.
    pub async fn new(
        cfg: EngineConfig,
        cluster: Arc<dyn Cluster>,
        observer: Arc<dyn RunObserver>,
    ) -> Result<Self, StartError> {
        std::fs::create_dir_all(&cfg.workdir).map_err(|source| StartError::Workdir {
            path: cfg.workdir.clone(),
            source,
        })?;
        // The CLI configuration first: without one, tofu prints a warning
        // where `version -json` should be.
        let cli_path = cfg.workdir.join("tofu.tfrc");
        std::fs::write(&cli_path, cli_config(cfg.provider_mirror.as_deref())).map_err(
            |source| StartError::CliConfig {
                path: cli_path.clone(),
                source,
            },
        )?;
        let version = tokio::process::Command::new(&cfg.tofu)
            .arg("version")
            .arg("-json")
            .env("TF_CLI_CONFIG_FILE", &cli_path)
            .output()
            .await
            .map_err(|source| StartError::Tofu {
                path: cfg.tofu.clone(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&version.stdout);
        let json = stdout.find('{').map(|i| &stdout[i..]).unwrap_or_default();
        let version: serde_json::Value =
            serde_json::from_str(json).map_err(|source| StartError::Version {
                path: cfg.tofu.clone(),
                source,
            })?;
        let version = version["terraform_version"]
            .as_str()
            .unwrap_or("unknown")
            .to_string();
        let mut fingerprint = format!("tofu {version}");
        if let Some(mirror) = &cfg.provider_mirror {
            for p in mirror_providers(mirror) {
                fingerprint.push_str(&format!("; {p}"));
            }
        }
        let cli_config = Some(cli_path);
        let hostname = hostname::get()
            .map(|h| h.to_string_lossy().to_string())
            .unwrap_or_default();
        info!(%fingerprint, workdir = %cfg.workdir.display(), parallel = cfg.parallel, "terraform engine ready");
        Ok(Engine {
            slots: Semaphore::new(cfg.parallel.max(1)),
            cfg,
            cluster,
            jobs: Mutex::default(),
            cancel: CancellationToken::new(),
            fingerprint,
            cli_config,
            hostname,
            observer,
            git_locks: Mutex::default(),
            credentials: Mutex::default(),
        })
    }

    /// Fetches a git module source; returns the commit (see [`git`]).
    /// Fetches of one repository take turns (they share its cache).
    pub async fn fetch_git(&self, src: &GitModule) -> Result<String, GitError> {
        let lock = self
            .git_locks
            .lock()
            .entry(src.url.clone())
            .or_default()
            .clone();
        let _turn = lock.lock().await;
        git::fetch(&self.cfg.workdir, src).await
    }

    /// Where fetched git commits are checked out.
    pub fn git_trees(&self) -> PathBuf {
        git::trees(&self.cfg.workdir)
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Interrupts every running job (SIGINT to OpenTofu, which then writes
    /// its state and releases its lock); called on shutdown.
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }

    /// Waits until no job runs (bounded by the caller).
    pub async fn drained(&self) {
        loop {
            let running = self
                .jobs
                .lock()
                .values()
                .any(|s| matches!(s, Slot::Running { .. }));
            if !running {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The job state for `key`; a finished result is handed over (once).
    pub fn take(&self, key: &str) -> JobState {
        let mut jobs = self.jobs.lock();
        match jobs.get(key) {
            None => JobState::Idle,
            Some(Slot::Running { kind, started }) => JobState::Running {
                kind: kind.clone(),
                started: *started,
            },
            Some(Slot::Done(_)) => match jobs.remove(key) {
                Some(Slot::Done(r)) => JobState::Done(r),
                _ => JobState::Idle,
            },
        }
    }

    /// Puts a result back (the reconcile that took it failed to record it).
    pub fn put_back(&self, key: &str, result: Box<JobResult>) {
        self.jobs
            .lock()
            .entry(key.to_string())
            .or_insert(Slot::Done(result));
    }

    /// Starts `kind` for `workspace` unless a job for `key` exists, its
    /// OpenTofu running with `credentials` (or the engine's own). `done`
    /// runs after the result is stored (it re-triggers the reconcile).
    pub fn start(
        self: &Arc<Self>,
        key: String,
        workspace: Workspace,
        kind: JobKind,
        credentials: Option<Credentials>,
        done: impl FnOnce() + Send + 'static,
    ) -> bool {
        {
            let mut jobs = self.jobs.lock();
            if jobs.contains_key(&key) {
                return false;
            }
            jobs.insert(
                key.clone(),
                Slot::Running {
                    kind: kind.clone(),
                    started: Timestamp::now(),
                },
            );
        }
        let engine = self.clone();
        let dir = self.dir_for(&workspace.backend);
        let kubeconfig = credentials.map(|c| match self.write_kubeconfig(&workspace.backend, &c) {
            Ok(path) => path,
            Err(error) => {
                // The job then fails on the backend with OpenTofu's own
                // message; never fall back to the engine's credentials.
                warn!(%error, "cannot write the job's kubeconfig");
                self.cfg.workdir.join("credentials").join("missing")
            }
        });
        match kubeconfig {
            Some(path) => self.credentials.lock().insert(dir.clone(), path),
            None => self.credentials.lock().remove(&dir),
        };
        // A child of the reconcile that started it (one trace: the pass,
        // the run, each tofu command).
        let span = tracing::info_span!("tofu_run", service = %key, operation = %kind.operation());
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let result = engine.execute(&key, workspace, kind).await;
                if let Some(path) = engine.credentials.lock().remove(&dir) {
                    let _ = std::fs::remove_dir_all(path.parent().unwrap_or(&path));
                }
                engine.jobs.lock().insert(key, Slot::Done(Box::new(result)));
                done();
            },
            span,
        ));
        true
    }

    /// A kubeconfig (and CA file) holding a job's credentials, readable only
    /// by the operator, outside the workspace. OpenTofu's kubernetes backend
    /// needs a kubeconfig (its KUBE_HOST/KUBE_TOKEN variables only override
    /// one), and the kubernetes provider reads the same file.
    fn write_kubeconfig(&self, backend: &Backend, c: &Credentials) -> std::io::Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = self
            .cfg
            .workdir
            .join("credentials")
            .join(format!("{}-{}", backend.namespace, backend.secret_suffix));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let write = |name: &str, content: &str| -> std::io::Result<PathBuf> {
            let path = dir.join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(content.as_bytes())?;
            Ok(path)
        };
        let mut cluster = serde_json::json!({"server": c.host});
        if let Some(ca) = &c.ca_pem {
            cluster["certificate-authority"] = write("ca.pem", ca)?.display().to_string().into();
        }
        if c.insecure {
            cluster["insecure-skip-tls-verify"] = true.into();
        }
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "mahler", "cluster": cluster}],
            "users": [{"name": "mahler-terraform", "user": {"token": c.token}}],
            "contexts": [{"name": "mahler", "context": {"cluster": "mahler", "user": "mahler-terraform"}}],
            "current-context": "mahler",
        });
        write("kubeconfig", &config.to_string())
    }

    fn dir_for(&self, backend: &Backend) -> PathBuf {
        self.cfg
            .workdir
            .join("workspaces")
            .join(&backend.namespace)
            .join(&backend.secret_suffix)
    }

    fn env(&self, ws: &Workspace) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        if let Some(c) = &self.cli_config {
            env.insert("TF_CLI_CONFIG_FILE".into(), c.display().to_string());
        }
        // The same variables configure OpenTofu's kubernetes backend and the
        // kubernetes provider.
        if let Some(path) = self.credentials.lock().get(&self.dir_for(&ws.backend)) {
            env.insert("KUBE_CONFIG_PATH".into(), path.display().to_string());
        } else {
            match &self.cfg.kubeconfig {
                Some(k) => {
                    env.insert("KUBE_CONFIG_PATH".into(), k.display().to_string());
                }
                None => {
                    env.insert("KUBE_IN_CLUSTER_CONFIG".into(), "true".into());
                }
            }
        }
        for (k, v) in &ws.vars {
            env.insert(format!("TF_VAR_{k}"), v.clone());
        }
        env
    }

    /// A run slot, counted as waiting while it is awaited (also when the
    /// wait is cancelled).
    async fn slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        struct Waiting<'a>(&'a dyn RunObserver);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.slot_wait(false);
            }
        }
        self.observer.slot_wait(true);
        let _waiting = Waiting(self.observer.as_ref());
        self.slots.acquire().await.expect("semaphore never closed")
    }

    async fn execute(&self, key: &str, ws: Workspace, kind: JobKind) -> JobResult {
        let started = Timestamp::now();
        let clock = Instant::now();
        let mut notes = Vec::new();
        let _permit = self.slot().await;
        let outcome = match self.steps(&ws, &kind, &mut notes).await {
            Ok(o) => o,
            Err(failure) => Outcome::Failed(failure),
        };
        let duration = clock.elapsed();
        self.observer
            .run_finished(kind.operation(), outcome.label(), duration);
        match &outcome {
            Outcome::Failed(failure) => {
                warn!(service = key, operation = %kind.operation(), reason = %failure.reason, message = %failure.message, "tofu run failed")
            }
            _ => info!(
                service = key,
                operation = %kind.operation(),
                ms = duration.as_millis() as u64,
                "tofu run finished"
            ),
        }
        JobResult {
            kind,
            workspace_hash: ws.hash.clone(),
            started,
            duration,
            outcome,
            notes,
        }
    }

    /// `tofu init -backend=false` + `tofu validate -json` of a template's
    /// module in a scratch directory: `Err` holds the diagnostics
    /// (`file:line: summary`).
    pub async fn validate(
        &self,
        template: &str,
        module: &BTreeMap<String, String>,
    ) -> Result<(), ValidateError> {
        let _permit = self.slot().await;
        let dir = self.cfg.workdir.join("templates").join(template);
        let ws = Workspace {
            files: module.clone(),
            vars: BTreeMap::new(),
            backend: Backend::for_service("", ""),
            hash: String::new(),
            plan_salt: String::new(),
        };
        write_workspace(&dir, &ws).map_err(|source| ValidateError::Workspace {
            path: dir.clone(),
            source,
        })?;
        let init = {
            self.tofu(
                &dir,
                &ws,
                &["init", "-backend=false", "-input=false", "-json"],
                false,
            )
            .await
            .map_err(ValidateError::Run)?
        };
        if init.code() != Some(0) {
            return Err(ValidateError::Init(init.error_text()));
        }
        let validate = self
            .tofu(&dir, &ws, &["validate", "-json"], true)
            .await
            .map_err(ValidateError::Run)?;
        let document = validate.stdout.as_deref().unwrap_or_default();
        if let Some(errors) = stream::validate_errors(document) {
            return Err(ValidateError::Invalid(mahler_core::truncate(&errors, 2048)));
        }
        if validate.code() != Some(0) {
            return Err(ValidateError::Invalid(validate.error_text()));
        }
        Ok(())
    }

    /// Runs one tofu command in `dir`.
    async fn tofu(
        &self,
        dir: &Path,
        ws: &Workspace,
        args: &[&str],
        keep_stdout: bool,
    ) -> Result<Output, RunFailure> {
        self.observer.process_started();
        let env = self.env(ws);
        let deadline = tokio::time::Instant::now() + self.cfg.timeout;
        process::run(
            Invocation {
                tofu: &self.cfg.tofu,
                dir,
                args: args.iter().map(|s| s.to_string()).collect(),
                env: &env,
                keep_stdout,
            },
            deadline,
            &self.cancel,
        )
        .await
        .map_err(|e| RunFailure {
            reason: FailureReason::RunnerError,
            result: RunResult::Failed,
            message: format!("cannot start {}: {e}", self.cfg.tofu.display()),
        })
    }

    async fn steps(
        &self,
        ws: &Workspace,
        kind: &JobKind,
        notes: &mut Vec<Note>,
    ) -> Result<Outcome, RunFailure> {
        let dir = self.dir_for(&ws.backend);
        write_workspace(&dir, ws).map_err(|e| RunFailure {
            reason: FailureReason::RunnerError,
            result: RunResult::Failed,
            message: format!("cannot write the workspace {}: {e}", dir.display()),
        })?;
        self.init(&dir, ws).await?;
        let lock = !matches!(kind, JobKind::Destroy { lock: false });
        if lock && let Some(held) = self.check_lock(&dir, ws, notes).await {
            return Ok(held);
        }
        let lock_args = if lock {
            vec!["-lock-timeout=10s"]
        } else {
            vec!["-lock=false"]
        };

        if let JobKind::Destroy { .. } = kind {
            let mut args = vec!["destroy", "-auto-approve", "-input=false", "-json"];
            args.extend(&lock_args);
            let out = self.tofu(&dir, ws, &args, false).await?;
            return match out.exit {
                Exit::Code(0) => Ok(Outcome::Destroyed),
                _ => Err(failed(FailureReason::DestroyFailed, &out)),
            };
        }

        if let JobKind::Converge = kind {
            // Auto approval: nobody reviews the plan between planning and
            // applying, so OpenTofu plans and applies in one process (one
            // provider start-up, as a person running `tofu apply` would).
            // The `-json` stream still reports every planned change.
            let mut args = vec!["apply", "-auto-approve", "-input=false", "-json"];
            args.extend(&lock_args);
            let out = self.tofu(&dir, ws, &args, false).await?;
            if out.code() != Some(0) {
                return Err(failed(FailureReason::ApplyFailed, &out));
            }
            let id = plan::plan_id(&ws.hash, &format!("{:?}", out.stream.changes));
            let plan = plan::from_stream(&ws.hash, &out.stream, id, false);
            let outputs = self.outputs(&dir, ws).await?;
            return Ok(Outcome::Applied { plan, outputs });
        }

        // Plan (saved, so exactly this plan is what gets applied).
        let plan_file = "mahler.tfplan";
        let mut args = vec![
            "plan",
            "-input=false",
            "-json",
            "-detailed-exitcode",
            "-out",
            plan_file,
        ];
        args.extend(&lock_args);
        let out = self.tofu(&dir, ws, &args, false).await?;
        let changes = match out.exit {
            Exit::Code(0) => false,
            Exit::Code(2) => true,
            _ => return Err(failed(FailureReason::PlanFailed, &out)),
        };
        let drift = matches!(kind, JobKind::DriftCheck { .. });
        let needs_id = matches!(kind, JobKind::PlanOnly | JobKind::ApplyApproved(_))
            || matches!(kind, JobKind::DriftCheck { correct: false });
        let id = if changes && needs_id {
            // The exact plan: every attribute before and after, so an
            // approval cannot carry over to a different change.
            let show = self
                .tofu(&dir, ws, &["show", "-json", plan_file], true)
                .await?;
            if show.code() != Some(0) {
                return Err(failed(FailureReason::PlanFailed, &show));
            }
            plan::plan_id(
                &format!("{}{}", ws.hash, ws.plan_salt),
                show.stdout.as_deref().unwrap_or_default(),
            )
        } else {
            plan::plan_id(&ws.hash, &format!("{:?}", out.stream.changes))
        };
        let plan = plan::from_stream(&ws.hash, &out.stream, id, drift);
        if drift && changes {
            let what: Vec<String> = if out.stream.drift.is_empty() {
                out.stream
                    .changes
                    .iter()
                    .map(|c| format!("{} {}", c.action, c.address))
                    .collect()
            } else {
                out.stream
                    .drift
                    .iter()
                    .map(|c| format!("{} ({})", c.address, c.action))
                    .collect()
            };
            notes.push(Note {
                warning: true,
                reason: NoteReason::DriftDetected,
                message: format!("changed outside OpenTofu: {}", what.join(", ")),
            });
        }
        if !changes {
            let outputs = self.outputs(&dir, ws).await?;
            return Ok(if drift {
                Outcome::InSync { outputs }
            } else {
                Outcome::Applied { plan, outputs }
            });
        }
        let apply = match kind {
            JobKind::Converge => unreachable!("handled above"),
            JobKind::PlanOnly => false,
            JobKind::ApplyApproved(approved) => approved == &plan.id,
            JobKind::DriftCheck { correct } => *correct,
            JobKind::Destroy { .. } => unreachable!("handled above"),
        };
        if !apply {
            return Ok(Outcome::Planned { plan });
        }
        let mut args = vec!["apply", "-input=false", "-json"];
        args.extend(&lock_args);
        args.push(plan_file);
        let out = self.tofu(&dir, ws, &args, false).await?;
        if out.code() != Some(0) {
            return Err(failed(FailureReason::ApplyFailed, &out));
        }
        let outputs = self.outputs(&dir, ws).await?;
        Ok(Outcome::Applied { plan, outputs })
    }

    /// `tofu init`, skipped when this workspace was initialised for the
    /// same module, backend and providers.
    async fn init(&self, dir: &Path, ws: &Workspace) -> Result<(), RunFailure> {
        let key = init_key(ws, &self.fingerprint);
        let marker = dir.join(".mahler-init");
        if std::fs::read_to_string(&marker).is_ok_and(|k| k == key) {
            return Ok(());
        }
        let out = {
            self.tofu(
                dir,
                ws,
                &["init", "-input=false", "-json", "-reconfigure"],
                false,
            )
            .await?
        };
        if out.code() != Some(0) {
            return Err(failed(FailureReason::InitFailed, &out));
        }
        let _ = std::fs::write(marker, key);
        Ok(())
    }

    /// The root module's outputs, read from the state the run just wrote
    /// (the backend's Secret) rather than by another `tofu output` process.
    async fn outputs(
        &self,
        _dir: &Path,
        ws: &Workspace,
    ) -> Result<BTreeMap<String, OutputValue>, RunFailure> {
        let name = ws.backend.state_secret();
        let failed = |message: String| RunFailure {
            reason: FailureReason::OutputFailed,
            result: RunResult::Failed,
            message,
        };
        let raw = self
            .cluster
            .state(&ws.backend)
            .await
            .map_err(|e| failed(format!("reading the state Secret {name}: {e}")))?;
        let Some(raw) = raw else {
            return Ok(BTreeMap::new());
        };
        outputs::from_state(&raw).map_err(|e| failed(format!("state Secret {name}: {e}")))
    }

    /// Looks at the state lock before a run: free → go; orphaned → release
    /// it (and say so); held → the outcome to report.
    async fn check_lock(
        &self,
        dir: &Path,
        ws: &Workspace,
        notes: &mut Vec<Note>,
    ) -> Option<Outcome> {
        let lease = match self.cluster.lock(&ws.backend).await {
            Ok(Some(l)) => l,
            Ok(None) => return None,
            Err(e) => {
                // OpenTofu will meet the same problem and report it precisely.
                warn!(error = %e, "cannot read the state lock");
                return None;
            }
        };
        let verdict = lock::judge(
            lock::held(&lease),
            &self.hostname,
            process::runs_in(dir),
            Timestamp::now(),
            self.cfg.timeout,
        );
        match verdict {
            lock::Verdict::Free => None,
            lock::Verdict::Held { message, .. } => Some(Outcome::LockHeld { message }),
            lock::Verdict::Orphaned { why, .. } => {
                match self.cluster.release_lock(&ws.backend, &lease).await {
                    Ok(()) => {
                        notes.push(Note {
                            warning: true,
                            reason: NoteReason::LockRecovered,
                            message: format!("released an orphaned state lock: {why}"),
                        });
                        None
                    }
                    Err(e) => Some(Outcome::LockHeld {
                        message: format!(
                            "the state lock is orphaned ({why}) but releasing it failed: {e}"
                        ),
                    }),
                }
            }
        }
    }
}

fn failed(reason: FailureReason, out: &Output) -> RunFailure {
    let (result, prefix) = match out.exit {
        Exit::TimedOut => (RunResult::TimedOut, "timed out and was interrupted; "),
        Exit::Cancelled => (RunResult::Cancelled, "interrupted by operator shutdown; "),
        Exit::Code(_) => (RunResult::Failed, ""),
    };
    RunFailure {
        reason,
        result,
        message: format!("{prefix}{}", out.error_text()),
    }
}

fn init_key(ws: &Workspace, fingerprint: &str) -> String {
    let mut h = Sha256::new();
    h.update(fingerprint.as_bytes());
    for (name, content) in &ws.files {
        if name == workspace::TFVARS {
            continue;
        }
        h.update(name.as_bytes());
        h.update([0]);
        h.update(content.as_bytes());
    }
    workspace::hex(&h.finalize())
}

/// Writes the workspace's files, removing stale ones (but keeping
/// `.terraform/`, the lock file and plan files).
fn write_workspace(dir: &Path, ws: &Workspace) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, content) in &ws.files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if std::fs::read_to_string(&path).is_ok_and(|c| &c == content) {
            continue;
        }
        std::fs::write(&path, content)?;
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let keep =
            name.starts_with('.') || name.ends_with(".tfplan") || ws.files.contains_key(&name);
        if !keep && !ws.files.keys().any(|f| f.starts_with(&format!("{name}/"))) {
            let path = entry.path();
            if path.is_dir() {
                std::fs::remove_dir_all(path)?;
            } else {
                std::fs::remove_file(path)?;
            }
        }
    }
    Ok(())
}

/// `host/namespace/name/version` of every provider in a mirror.
fn mirror_providers(mirror: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let walk = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    };
    for host in walk(mirror) {
        for ns in walk(&host) {
            for name in walk(&ns) {
                for version in walk(&name) {
                    if let Ok(rel) = version.strip_prefix(mirror) {
                        found.push(rel.display().to_string());
                    }
                }
            }
        }
    }
    found.sort();
    found
}

/// The OpenTofu CLI configuration: providers only from the mirror. The
/// mirror is unpacked, so `init` links each workspace to it (no copies) and
/// nothing is written to a shared directory: OpenTofu's plugin cache is not
/// safe for concurrent inits, and with parallel runs it raced (a workspace
/// lost its provider directory while another init refreshed the cache).
/// (CLI configuration, not a workspace: its one string is JSON-escaped,
/// which is valid HCL.)
fn cli_config(mirror: Option<&Path>) -> String {
    let q = |p: &Path| serde_json::to_string(&p.display().to_string()).expect("string");
    match mirror {
        Some(mirror) => format!(
            "provider_installation {{\n  filesystem_mirror {{\n    path    = {}\n    include = [\"registry.opentofu.org/*/*\", \"registry.terraform.io/*/*\"]\n  }}\n}}\n",
            q(mirror)
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_files_are_written_and_stale_ones_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".terraform")).unwrap();
        std::fs::write(dir.path().join("old.tf"), "x").unwrap();
        std::fs::write(dir.path().join("mahler.tfplan"), "x").unwrap();
        let ws = Workspace {
            files: BTreeMap::from([
                ("main.tf".to_string(), "a".to_string()),
                ("modules/x/main.tf".to_string(), "b".to_string()),
            ]),
            vars: BTreeMap::new(),
            backend: Backend::for_service("ns", "svc"),
            hash: "h".into(),
            plan_salt: String::new(),
        };
        write_workspace(dir.path(), &ws).unwrap();
        assert!(!dir.path().join("old.tf").exists());
        assert!(dir.path().join(".terraform").exists());
        assert!(dir.path().join("mahler.tfplan").exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("modules/x/main.tf")).unwrap(),
            "b"
        );
    }
}
