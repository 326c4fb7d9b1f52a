//! Every label, annotation, finalizer and condition name Mahler reads or
//! writes: part of the API contract (users annotate with them, GitOps
//! tools and the CLI read them), so they live beside the types.

/// The label every object Mahler creates carries (`app.kubernetes.io/managed-by`).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "mahler");
/// Server-side apply field manager for everything the operator writes.
pub const FIELD_MANAGER: &str = "mahler-operator";

/// Label on every child of a Service (its Deployment, pods, Kubernetes Service, outputs Secret).
pub const SERVICE_LABEL: &str = "mahler.dev/service";
/// Label on a Connection's NetworkPolicy.
pub const CONNECTION_LABEL: &str = "mahler.dev/connection";
/// Label on an Environment's namespace and default-deny policy.
pub const ENVIRONMENT_LABEL: &str = "mahler.dev/environment";
/// Label naming the Project of an Environment's namespace.
pub const PROJECT_LABEL: &str = "mahler.dev/project";
/// Name of the NetworkPolicy that denies all traffic in an environment's namespace.
pub const DEFAULT_DENY_POLICY: &str = "mahler-default-deny";

/// Pod-template annotation: the digest of the Terraform outputs a
/// Deployment reads, so a changed output re-rolls its pods.
pub const OUTPUTS_HASH_ANNOTATION: &str = "mahler.dev/outputs-hash";
/// Annotation on objects compared whole (Namespaces): the digest of what
/// Mahler applied.
pub const APPLIED_HASH: &str = "mahler.dev/applied-hash";

/// `kubectl annotate msvc NAME mahler.dev/approve-plan=<plan id>` approves a plan.
pub const APPROVE_ANNOTATION: &str = "mahler.dev/approve-plan";
/// Who approved (set with the approval; the shipped admission policy checks
/// it is the requesting user and an environment owner).
pub const APPROVED_BY_ANNOTATION: &str = "mahler.dev/approved-by";
/// `kubectl annotate msvc NAME mahler.dev/force-delete=true` removes a
/// template Service without destroying its infrastructure.
pub const FORCE_DELETE_ANNOTATION: &str = "mahler.dev/force-delete";

/// The finalizer on Projects, Environments and template Services.
pub const FINALIZER: &str = "mahler.dev/cleanup";
/// Finalizer on a template Service's state Secret: deleting the namespace
/// (or the Secret by hand) cannot drop the state before `tofu destroy` has
/// used it.
pub const STATE_FINALIZER: &str = "mahler.dev/terraform-state";

/// Condition type reporting drift of a template Service's infrastructure.
pub const DRIFTED: &str = "Drifted";
/// Condition type naming fields the object uses that this version of
/// Mahler accepts but does not implement yet (kstatus ignores it).
pub const NOT_IMPLEMENTED: &str = "NotImplemented";

/// Condition of a Service in a Consul-enabled environment: its instances are
/// in the Consul catalog (docs/consul.md).
pub const CONSUL_REGISTERED: &str = "ConsulRegistered";
/// Condition of a Connection in a Consul-enabled environment: its
/// service-intentions allow is written.
pub const INTENTIONS_SYNCED: &str = "IntentionsSynced";
/// Condition of a Service with `spec.expose`: its gateway route is written.
pub const EXPOSED: &str = "Exposed";
/// Consul meta key marking what Mahler registered and writes.
pub const CONSUL_MANAGED_META: &str = "mahler-managed";

/// Condition of an Environment with `spec.telemetry`: its collector runs the
/// rendered, validated config (docs/telemetry.md).
pub const TELEMETRY_READY: &str = "TelemetryReady";
/// Name of an environment's collector Deployment, Service, ConfigMap and
/// ServiceAccount (a Service of that name gets NameConflict).
pub const COLLECTOR_NAME: &str = "mahler-collector";
/// Pod-template annotation of the collector: the digest of its config, so a
/// real change rolls it, and nothing else does.
pub const CONFIG_HASH_ANNOTATION: &str = "mahler.dev/config-hash";
