//! The Terraform engine: real OpenTofu runs for template Services.
//!
//! A reconcile never waits for OpenTofu. It asks the engine to start a job
//! (plan, apply, drift check, destroy) for a workspace and returns; the job
//! runs in the background within a bounded number of parallel runs, and when
//! it ends the engine re-triggers that Service's reconcile, which takes the
//! result and writes status, Events and the outputs Secret. One job per
//! Service at a time; the state lock (a Lease) guards against anyone else.

pub mod git;
pub mod lock;
pub mod process;
pub mod stream;
pub mod workspace;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::crd::PlanStatus;
use process::{Exit, Invocation, Output};
pub use workspace::{Backend, RenderError, Workspace};

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

/// What a job does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// Plan and apply in one `tofu apply` (auto approval).
    Converge,
    /// Plan and stop: the plan waits for approval.
    PlanOnly,
    /// Apply the plan with this id (approved); a different plan is not applied.
    ApplyApproved(String),
    /// Plan against the real infrastructure; `correct` applies what drifted.
    DriftCheck { correct: bool },
    /// Destroy everything in the state. `lock: false` when the namespace is
    /// terminating (no new Lease can be created there).
    Destroy { lock: bool },
}

impl JobKind {
    pub fn operation(&self) -> &'static str {
        match self {
            JobKind::Converge => "Apply",
            JobKind::PlanOnly => "Plan",
            JobKind::ApplyApproved(_) => "Apply",
            JobKind::DriftCheck { .. } => "DriftCheck",
            JobKind::Destroy { .. } => "Destroy",
        }
    }
}

/// One output value, as a string (non-strings JSON-encoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputValue {
    pub value: String,
    pub sensitive: bool,
}

/// How a job ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The workspace is applied (possibly with no changes); its outputs.
    Applied {
        plan: PlanStatus,
        outputs: BTreeMap<String, OutputValue>,
    },
    /// A plan with changes waits for approval (manual, or drift held).
    Planned {
        plan: PlanStatus,
    },
    /// A drift check found nothing to change.
    InSync {
        outputs: BTreeMap<String, OutputValue>,
    },
    Destroyed,
    /// The state lock is held by someone who may still be working.
    LockHeld {
        message: String,
    },
    Failed {
        /// Condition reason: `InitFailed`, `PlanFailed`, `ApplyFailed`, ...
        reason: &'static str,
        /// `Failed`, `TimedOut` or `Cancelled`.
        result: &'static str,
        message: String,
    },
}

#[derive(Clone, Debug)]
pub struct JobResult {
    pub kind: JobKind,
    pub workspace_hash: String,
    pub started: Timestamp,
    pub duration: Duration,
    pub outcome: Outcome,
    /// Things to tell the user as Events: (warning, reason, message).
    pub notes: Vec<(bool, &'static str, String)>,
}

enum Slot {
    Running {
        kind: JobKind,
        started: Timestamp,
        workspace_hash: String,
    },
    Done(Box<JobResult>),
}

/// What the engine is doing for one Service.
pub enum JobState {
    Idle,
    Running {
        kind: JobKind,
        started: Timestamp,
        workspace_hash: String,
    },
    Done(Box<JobResult>),
}

pub struct Engine {
    cfg: EngineConfig,
    client: Client,
    slots: Semaphore,
    jobs: Mutex<HashMap<String, Slot>>,
    cancel: CancellationToken,
    /// OpenTofu and provider versions, part of every workspace hash.
    fingerprint: String,
    cli_config: Option<PathBuf>,
    hostname: String,
    metrics: Arc<crate::metrics::Metrics>,
    git_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Engine {
    /// Prepares the working directory, the CLI configuration (mirror and
    /// providers linked from it) and the fingerprint. Fails when `tofu` cannot run.
    pub async fn new(
        cfg: EngineConfig,
        client: Client,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, String> {
        std::fs::create_dir_all(&cfg.workdir)
            .map_err(|e| format!("cannot create {}: {e}", cfg.workdir.display()))?;
        // The CLI configuration first: without one, tofu prints a warning
        // where `version -json` should be.
        let cli_path = cfg.workdir.join("tofu.tfrc");
        std::fs::write(&cli_path, cli_config(cfg.provider_mirror.as_deref()))
            .map_err(|e| format!("cannot write {}: {e}", cli_path.display()))?;
        let version = tokio::process::Command::new(&cfg.tofu)
            .arg("version")
            .arg("-json")
            .env("TF_CLI_CONFIG_FILE", &cli_path)
            .output()
            .await
            .map_err(|e| {
                format!(
                    "cannot run {} ({e}); set MAHLER_TOFU to the OpenTofu binary",
                    cfg.tofu.display()
                )
            })?;
        let stdout = String::from_utf8_lossy(&version.stdout);
        let json = stdout.find('{').map(|i| &stdout[i..]).unwrap_or_default();
        let version: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| format!("{} version -json: {e}", cfg.tofu.display()))?;
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
            client,
            jobs: Mutex::default(),
            cancel: CancellationToken::new(),
            fingerprint,
            cli_config,
            hostname,
            metrics,
            git_locks: Mutex::default(),
        })
    }

    /// Fetches a git module source; returns the commit (see [`git`]).
    /// Fetches of one repository take turns (they share its cache).
    pub async fn fetch_git(&self, src: &crate::crd::GitModule) -> Result<String, String> {
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
            Some(Slot::Running {
                kind,
                started,
                workspace_hash,
            }) => JobState::Running {
                kind: kind.clone(),
                started: *started,
                workspace_hash: workspace_hash.clone(),
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

    /// Starts `kind` for `workspace` unless a job for `key` exists. `done`
    /// runs after the result is stored (it re-triggers the reconcile).
    pub fn start(
        self: &Arc<Self>,
        key: String,
        workspace: Workspace,
        kind: JobKind,
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
                    workspace_hash: workspace.hash.clone(),
                },
            );
        }
        let engine = self.clone();
        tokio::spawn(async move {
            let result = engine.execute(&key, workspace, kind).await;
            engine.jobs.lock().insert(key, Slot::Done(Box::new(result)));
            done();
        });
        true
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
        match &self.cfg.kubeconfig {
            Some(k) => {
                env.insert("KUBE_CONFIG_PATH".into(), k.display().to_string());
            }
            None => {
                env.insert("KUBE_IN_CLUSTER_CONFIG".into(), "true".into());
            }
        }
        for (k, v) in &ws.vars {
            env.insert(format!("TF_VAR_{k}"), v.clone());
        }
        env
    }

    async fn execute(&self, key: &str, ws: Workspace, kind: JobKind) -> JobResult {
        let started = Timestamp::now();
        let clock = Instant::now();
        let mut notes = Vec::new();
        let _permit = self.slots.acquire().await.expect("semaphore never closed");
        let outcome = match self.steps(&ws, &kind, &mut notes).await {
            Ok(o) => o,
            Err(o) => o,
        };
        let duration = clock.elapsed();
        let result = match &outcome {
            Outcome::Applied { .. } => "Applied",
            Outcome::Planned { .. } => "Planned",
            Outcome::InSync { .. } => "InSync",
            Outcome::Destroyed => "Destroyed",
            Outcome::LockHeld { .. } => "LockHeld",
            Outcome::Failed { result, .. } => result,
        };
        self.metrics.tofu_run(kind.operation(), result, duration);
        match &outcome {
            Outcome::Failed {
                reason, message, ..
            } => {
                warn!(service = key, operation = kind.operation(), reason, %message, "tofu run failed")
            }
            _ => info!(
                service = key,
                operation = kind.operation(),
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
    ) -> Result<(), String> {
        let _permit = self.slots.acquire().await.expect("semaphore never closed");
        let dir = self.cfg.workdir.join("templates").join(template);
        let ws = Workspace {
            files: module.clone(),
            vars: BTreeMap::new(),
            backend: Backend::for_service("", ""),
            hash: String::new(),
            plan_salt: String::new(),
        };
        write_workspace(&dir, &ws).map_err(|e| format!("cannot write {}: {e}", dir.display()))?;
        let init = {
            self.tofu(
                &dir,
                &ws,
                &["init", "-backend=false", "-input=false", "-json"],
                false,
            )
            .await
            .map_err(outcome_text)?
        };
        if init.code() != Some(0) {
            return Err(format!("tofu init: {}", init.error_text()));
        }
        let validate = self
            .tofu(&dir, &ws, &["validate", "-json"], true)
            .await
            .map_err(outcome_text)?;
        let document = validate.stdout.as_deref().unwrap_or_default();
        if let Some(errors) = stream::validate_errors(document) {
            return Err(process::truncate(&errors, 2048));
        }
        if validate.code() != Some(0) {
            return Err(validate.error_text());
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
    ) -> Result<Output, Outcome> {
        self.metrics.tofu_processes.inc();
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
        .map_err(|e| Outcome::Failed {
            reason: "RunnerError",
            result: "Failed",
            message: format!("cannot start {}: {e}", self.cfg.tofu.display()),
        })
    }

    async fn steps(
        &self,
        ws: &Workspace,
        kind: &JobKind,
        notes: &mut Vec<(bool, &'static str, String)>,
    ) -> Result<Outcome, Outcome> {
        let dir = self.dir_for(&ws.backend);
        write_workspace(&dir, ws).map_err(|e| Outcome::Failed {
            reason: "RunnerError",
            result: "Failed",
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
                _ => Err(failed("DestroyFailed", &out)),
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
                return Err(failed("ApplyFailed", &out));
            }
            let id = plan_id(&ws.hash, &format!("{:?}", out.stream.changes));
            let plan = plan_status(ws, &out.stream, id, false, "Applied");
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
            _ => return Err(failed("PlanFailed", &out)),
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
                return Err(failed("PlanFailed", &show));
            }
            plan_id(
                &format!("{}{}", ws.hash, ws.plan_salt),
                show.stdout.as_deref().unwrap_or_default(),
            )
        } else {
            plan_id(&ws.hash, &format!("{:?}", out.stream.changes))
        };
        let phase = if changes { "Pending" } else { "NoChanges" };
        let mut plan = plan_status(ws, &out.stream, id, drift, phase);
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
            notes.push((
                true,
                "DriftDetected",
                format!("changed outside OpenTofu: {}", what.join(", ")),
            ));
        }
        if !changes {
            let outputs = self.outputs(&dir, ws).await?;
            return Ok(if drift {
                Outcome::InSync { outputs }
            } else {
                plan.phase = "Applied".into();
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
            return Err(failed("ApplyFailed", &out));
        }
        plan.phase = "Applied".into();
        let outputs = self.outputs(&dir, ws).await?;
        Ok(Outcome::Applied { plan, outputs })
    }

    /// `tofu init`, skipped when this workspace was initialised for the
    /// same module, backend and providers.
    async fn init(&self, dir: &Path, ws: &Workspace) -> Result<(), Outcome> {
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
            return Err(failed("InitFailed", &out));
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
    ) -> Result<BTreeMap<String, OutputValue>, Outcome> {
        let failed = |message: String| Outcome::Failed {
            reason: "OutputFailed",
            result: "Failed",
            message,
        };
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(self.client.clone(), &ws.backend.namespace);
        let name = ws.backend.state_secret();
        let secret = secrets
            .get_opt(&name)
            .await
            .map_err(|e| failed(format!("reading the state Secret {name}: {e}")))?;
        let Some(raw) = secret
            .and_then(|s| s.data)
            .and_then(|mut d| d.remove("tfstate"))
        else {
            return Ok(BTreeMap::new());
        };
        let json = gunzip(&raw.0).map_err(|e| failed(format!("state Secret {name}: {e}")))?;
        state_outputs(&json).map_err(|e| failed(format!("state Secret {name}: {e}")))
    }

    /// Looks at the state lock before a run: free → go; orphaned → release
    /// it (and say so); held → the outcome to report.
    async fn check_lock(
        &self,
        dir: &Path,
        ws: &Workspace,
        notes: &mut Vec<(bool, &'static str, String)>,
    ) -> Option<Outcome> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &ws.backend.namespace);
        let lease = match api.get_opt(&ws.backend.lock_lease()).await {
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
            lock::process_in(dir),
            Timestamp::now(),
            self.cfg.timeout,
        );
        match verdict {
            lock::Verdict::Free => None,
            lock::Verdict::Held { message, .. } => Some(Outcome::LockHeld { message }),
            lock::Verdict::Orphaned { why, .. } => match lock::release(&api, &lease).await {
                Ok(()) => {
                    notes.push((
                        true,
                        "LockRecovered",
                        format!("released an orphaned state lock: {why}"),
                    ));
                    None
                }
                Err(e) => Some(Outcome::LockHeld {
                    message: format!(
                        "the state lock is orphaned ({why}) but releasing it failed: {e}"
                    ),
                }),
            },
        }
    }
}

/// The plan as status shows it: counts, why, and the first 50 changes.
fn plan_status(
    ws: &Workspace,
    stream: &stream::Stream,
    id: String,
    drift: bool,
    phase: &str,
) -> PlanStatus {
    let (add, change, destroy) = stream.counts();
    let trigger = if drift {
        "Drift"
    } else if stream.changes.iter().all(|c| c.action == "create") {
        "Create"
    } else {
        "Update"
    };
    PlanStatus {
        id,
        workspace_hash: ws.hash.clone(),
        add,
        change,
        destroy,
        trigger: trigger.to_string(),
        phase: phase.to_string(),
        resources: stream.changes.iter().take(50).cloned().collect(),
        approved_by: None,
    }
}

fn outcome_text(o: Outcome) -> String {
    match o {
        Outcome::Failed { message, .. } => message,
        other => format!("{other:?}"),
    }
}

fn failed(reason: &'static str, out: &Output) -> Outcome {
    let (result, prefix) = match out.exit {
        Exit::TimedOut => ("TimedOut", "timed out and was interrupted; "),
        Exit::Cancelled => ("Cancelled", "interrupted by operator shutdown; "),
        Exit::Code(_) => ("Failed", ""),
    };
    Outcome::Failed {
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

/// A plan id: the workspace plus the exact changes, short enough to type.
pub fn plan_id(workspace_hash: &str, changes: &str) -> String {
    let mut h = Sha256::new();
    h.update(workspace_hash.as_bytes());
    h.update(strip_timestamp(changes).as_bytes());
    workspace::hex(&h.finalize())[..12].to_string()
}

/// `tofu show -json` includes a `timestamp`; everything else is the plan.
fn strip_timestamp(show: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(show) {
        Ok(mut v) => {
            if let Some(o) = v.as_object_mut() {
                o.remove("timestamp");
                let keep = ["resource_changes", "output_changes", "resource_drift"];
                o.retain(|k, _| keep.contains(&k.as_str()));
            }
            v.to_string()
        }
        Err(_) => show.to_string(),
    }
}

/// The backend gzips the state (`encoding: gzip`); older states are plain.
fn gunzip(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(raw).read_to_end(&mut out)?;
    Ok(out)
}

/// Outputs of a state document (`{"outputs": {name: {value, sensitive}}}`).
fn state_outputs(state: &[u8]) -> Result<BTreeMap<String, OutputValue>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct State {
        #[serde(default)]
        outputs: serde_json::Map<String, serde_json::Value>,
    }
    let state: State = serde_json::from_slice(state)?;
    parse_outputs(&serde_json::Value::Object(state.outputs).to_string())
}

fn parse_outputs(raw: &str) -> Result<BTreeMap<String, OutputValue>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Raw {
        #[serde(default)]
        sensitive: bool,
        value: serde_json::Value,
    }
    let raw: BTreeMap<String, Raw> = serde_json::from_str(raw)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let value = match v.value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (
                k,
                OutputValue {
                    value,
                    sensitive: v.sensitive,
                },
            )
        })
        .collect())
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

/// Parses a duration such as `90s`, `30m`, `1h30m`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    (num.is_empty() && !s.is_empty()).then_some(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("5d"), None);
        assert_eq!(parse_duration("9999999999999999h"), None);
    }

    #[test]
    fn outputs_become_strings() {
        let got = parse_outputs(
            r#"{"url":{"sensitive":false,"type":"string","value":"postgres://x"},"port":{"sensitive":false,"type":"number","value":5432},"pw":{"sensitive":true,"type":"string","value":"s3cret"}}"#,
        )
        .unwrap();
        assert_eq!(got["port"].value, "5432");
        assert_eq!(got["url"].value, "postgres://x");
        assert!(got["pw"].sensitive);
    }

    #[test]
    fn outputs_come_from_the_gzipped_state() {
        use std::io::Write;
        let state = br#"{"version":4,"serial":3,"outputs":{"url":{"value":"postgres://x","type":"string","sensitive":true},"n":{"value":2,"type":"number"}},"resources":[]}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(state).unwrap();
        let raw = gz.finish().unwrap();
        let outputs = state_outputs(&gunzip(&raw).unwrap()).unwrap();
        assert_eq!(
            outputs["url"],
            OutputValue {
                value: "postgres://x".into(),
                sensitive: true
            }
        );
        assert_eq!(outputs["n"].value, "2");
        assert!(state_outputs(br#"{"version":4}"#).unwrap().is_empty());
    }

    #[test]
    fn plan_ids_ignore_the_timestamp_only() {
        let a = plan_id("h", r#"{"timestamp":"1","resource_changes":[{"a":1}]}"#);
        let b = plan_id("h", r#"{"timestamp":"2","resource_changes":[{"a":1}]}"#);
        let c = plan_id("h", r#"{"timestamp":"2","resource_changes":[{"a":2}]}"#);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, plan_id("h2", r#"{"resource_changes":[{"a":1}]}"#));
    }

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
