//! The command line: every command, flag and help text (clap derive). No
//! behaviour here; `lib.rs` dispatches to `commands/`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Examples:
  mahler status shop-staging
  mahler service create api --image ghcr.io/acme/api:1.4 --port 8080 --env shop-staging
  mahler deploy api --image ghcr.io/acme/api:1.5 --wait
  mahler connect api db --port 5432
  mahler explain api
  mahler logs api -f

Settings come from flags, then MAHLER_* variables, then the Mahler context
(`mahler config`), then the kubeconfig. Exit codes: 0 ok, 1 failure, 2 usage,
3 not found, 4 not ready or timed out, 5 forbidden. docs/cli.md has it all.";

/// Mahler: services, connections and their infrastructure on Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "mahler", version, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes (kubectl's where kubectl has one).
#[derive(Debug, Args, Clone, Default)]
pub struct Global {
    /// Mahler context to use (`mahler config get-contexts`); a kubeconfig
    /// context of that name works too. [env: MAHLER_CONTEXT]
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Kubeconfig context, overriding the one of the Mahler context.
    #[arg(long, global = true, value_name = "NAME")]
    pub kube_context: Option<String>,
    /// Path to the kubeconfig (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Default project. [env: MAHLER_PROJECT]
    #[arg(short = 'p', long, global = true)]
    pub project: Option<String>,
    /// Environment: its full name (shop-staging) or, with a project, its
    /// short name (staging). In `service create`, `--env K=V` (with `=`)
    /// sets a variable instead. [env: MAHLER_ENV]
    #[arg(short = 'e', long = "env", global = true, value_name = "ENV")]
    pub environment: Vec<String>,
    /// Output format. [env: MAHLER_OUTPUT]
    #[arg(short = 'o', long, global = true, value_enum)]
    pub output: Option<Output>,
    /// Act as this user (impersonation, like kubectl --as).
    #[arg(long = "as", global = true, value_name = "USER")]
    pub as_user: Option<String>,
    /// Act with this group (repeatable, like kubectl --as-group).
    #[arg(long = "as-group", global = true, value_name = "GROUP")]
    pub as_groups: Vec<String>,
    /// Colour: auto (only on a terminal), always or never. NO_COLOR is honoured.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

impl Global {
    /// The environment named by `--env` (the last value without `=`).
    pub fn environment(&self) -> Option<&str> {
        self.environment
            .iter()
            .rev()
            .find(|v| !v.contains('='))
            .map(String::as_str)
    }

    /// `--env K=V` values (variables of `service create`).
    pub fn variables(&self) -> Vec<&str> {
        self.environment
            .iter()
            .filter(|v| v.contains('='))
            .map(String::as_str)
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    Table,
    Wide,
    Json,
    Yaml,
    Name,
    /// Graphviz (graph only).
    Dot,
    /// Mermaid (graph only).
    Mermaid,
}

impl Output {
    pub fn as_str(&self) -> &'static str {
        match self {
            Output::Table => "table",
            Output::Wide => "wide",
            Output::Json => "json",
            Output::Yaml => "yaml",
            Output::Name => "name",
            Output::Dot => "dot",
            Output::Mermaid => "mermaid",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ColorChoice {
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Projects: a team's unit of ownership.
    #[command(subcommand, visible_alias = "projects")]
    Project(ProjectCommand),
    /// Environments of a project (each owns a namespace).
    #[command(subcommand, name = "env", visible_alias = "environment")]
    Env(EnvCommand),
    /// Services of an environment: an image, or infrastructure from a template.
    #[command(subcommand, visible_alias = "svc")]
    Service(ServiceCommand),
    /// Let Service FROM reach Service TO on a port (a Connection).
    #[command(after_help = "Example:\n  mahler connect api db --port 5432 --env shop-staging")]
    Connect(ConnectArgs),
    /// Remove the Connection(s) from FROM to TO.
    #[command(after_help = "Example:\n  mahler disconnect api db")]
    Disconnect(DisconnectArgs),
    /// Server-side apply manifests from files, a directory or stdin.
    #[command(
        after_help = "Examples:\n  mahler apply -f manifests/examples/\n  cat svc.yaml | mahler apply -f - --wait"
    )]
    Apply(ApplyArgs),
    /// Roll out a new image of a Service.
    #[command(
        after_help = "Example:\n  mahler deploy api --image ghcr.io/acme/api:1.5 --wait --timeout 2m"
    )]
    Deploy(DeployArgs),
    /// An environment at a glance: services, readiness, URLs, plans, connections.
    #[command(after_help = "Example:\n  mahler status shop-staging")]
    Status(EnvArg),
    /// Services and connections (-o table|dot|mermaid|json).
    #[command(
        after_help = "Examples:\n  mahler graph shop-staging\n  mahler graph shop-staging -o dot | dot -Tsvg > graph.svg"
    )]
    Graph(EnvArg),
    /// Why a Service is not Ready, and what to do next.
    #[command(after_help = "Example:\n  mahler explain api --env shop-staging")]
    Explain(NameArg),
    /// Logs of a Service's pods, or of every Service of an environment.
    #[command(
        after_help = "Examples:\n  mahler logs api -f\n  mahler logs --env shop-staging --since 10m --tail 20"
    )]
    Logs(LogsArgs),
    /// Approve the pending Terraform plan of a template Service.
    #[command(after_help = "Example:\n  mahler approve db-credentials --plan 3f2a9c1e")]
    Approve(ApproveArgs),
    /// Mahler contexts: kube context, default project and environment, output.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Shell completions: `source <(mahler completion bash)`.
    #[command(
        after_help = "Examples:\n  source <(mahler completion bash)\n  mahler completion zsh > \"${fpath[1]}/_mahler\"\n  mahler completion fish > ~/.config/fish/completions/mahler.fish"
    )]
    Completion(CompletionArgs),
}

#[derive(Debug, Args)]
pub struct EnvArg {
    /// The environment (default: --env, MAHLER_ENV or the context's).
    pub env: Option<String>,
}

#[derive(Debug, Args)]
pub struct NameArg {
    pub name: String,
}

#[derive(Debug, Args, Clone)]
pub struct WaitArgs {
    /// Wait until Ready, showing progress.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (e.g. 90s, 5m).
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project.
    #[command(after_help = "Example:\n  mahler project create shop --display-name \"Shop\"")]
    Create {
        name: String,
        #[arg(long)]
        display_name: Option<String>,
        /// A member as user:NAME=ROLE or group:NAME=ROLE (admin, developer,
        /// viewer); repeatable. The operator binds the role in every
        /// environment of the project (docs/access.md).
        #[arg(long = "member", value_name = "KIND:NAME=ROLE")]
        members: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List projects.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  mahler project list\n  mahler project list -o name"
    )]
    List,
    /// Show one project.
    #[command(after_help = "Example:\n  mahler project get shop -o yaml")]
    Get { name: String },
    /// Delete a project and all its environments.
    #[command(
        visible_alias = "rm",
        after_help = "Example:\n  mahler project delete shop --wait"
    )]
    Delete {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Create an environment of a project.
    #[command(
        after_help = "Examples:\n  mahler env create staging --project shop          # creates shop-staging\n  mahler env create shop-prod --owner user:alice --protected"
    )]
    Create {
        /// Full (shop-staging) or short (staging, with --project) name.
        name: String,
        /// An owner as user:NAME or group:NAME; repeatable.
        #[arg(long = "owner", value_name = "KIND:NAME")]
        owners: Vec<String>,
        /// Only owners may change it or its services and connections
        /// (enforced by the API server; needs an --owner).
        #[arg(long)]
        protected: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List environments (of --project when set).
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  mahler env list\n  mahler env list --project shop -o wide"
    )]
    List,
    /// Show one environment (default: the one in use).
    #[command(after_help = "Example:\n  mahler env get shop-staging -o json")]
    Get { name: Option<String> },
    /// Delete an environment, its namespace and everything in it.
    #[command(
        visible_alias = "rm",
        after_help = "Example:\n  mahler env delete shop-preview-42 --wait"
    )]
    Delete {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a Service from an image or a template.
    #[command(
        after_help = "Examples:\n  mahler service create api --image ghcr.io/acme/api:1.4 --port http=8080 --replicas 2 --env LOG=debug\n  mahler service create db-credentials --template postgres-credentials --input database=shop"
    )]
    Create(ServiceCreate),
    /// List the Services of an environment.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  mahler service list --env shop-staging\n  mahler svc ls -o wide"
    )]
    List,
    /// Show one Service.
    #[command(after_help = "Example:\n  mahler service get api -o yaml")]
    Get { name: String },
    /// Delete a Service (a template Service destroys or retains its infrastructure).
    #[command(
        visible_alias = "rm",
        after_help = "Example:\n  mahler service delete worker --wait"
    )]
    Delete {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Debug, Args)]
pub struct ServiceCreate {
    pub name: String,
    /// The container image.
    #[arg(
        long,
        conflicts_with = "template",
        required_unless_present = "template"
    )]
    pub image: Option<String>,
    /// A port as PORT or NAME=PORT (repeatable; the first unnamed one is "http").
    #[arg(long = "port", value_name = "[NAME=]PORT")]
    pub ports: Vec<String>,
    #[arg(long)]
    pub replicas: Option<i32>,
    /// A ResourceTemplate: the Service runs OpenTofu instead of an image.
    #[arg(long)]
    pub template: Option<String>,
    /// A template input k=v (repeatable; v is parsed as JSON when it can be: 3, true, "x").
    #[arg(long = "input", value_name = "K=V", requires = "template")]
    pub inputs: Vec<String>,
    /// Plans wait for an owner's approval (`mahler approve`).
    #[arg(long, requires = "template")]
    pub manual_approval: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    pub from: String,
    pub to: String,
    /// The port of TO that FROM may reach.
    #[arg(long)]
    pub port: i32,
    /// The Connection's name (default FROM-TO).
    #[arg(long)]
    pub name: Option<String>,
    /// Prefix of the injected variables (default: TO upper-cased).
    #[arg(long)]
    pub env_prefix: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct DisconnectArgs {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A file, a directory (its .yaml/.yml/.json files) or - for stdin; repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR|-"
    )]
    pub files: Vec<PathBuf>,
    /// Take over fields another manager owns (server-side apply --force-conflicts).
    #[arg(long)]
    pub force_conflicts: bool,
    /// Ask the API server to validate only (server-side dry run).
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    pub service: String,
    #[arg(long)]
    pub image: String,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The Service (omit with --env for every Service of the environment).
    pub service: Option<String>,
    /// Follow: keep streaming until Ctrl-C.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only lines newer than this (e.g. 10s, 5m, 1h).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// The last N lines of each container.
    #[arg(long)]
    pub tail: Option<i64>,
    /// Prefix each line with its timestamp.
    #[arg(long)]
    pub timestamps: bool,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    pub service: String,
    /// The plan to approve (default: the pending one; refused if it changed).
    #[arg(long)]
    pub plan: Option<String>,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long)]
    pub yes: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// List the Mahler contexts.
    #[command(after_help = "Example:\n  mahler config get-contexts")]
    GetContexts,
    /// The current Mahler context.
    #[command(after_help = "Example:\n  mahler config current-context")]
    CurrentContext,
    /// Make NAME the current Mahler context.
    #[command(after_help = "Example:\n  mahler config use-context staging")]
    UseContext { name: String },
    /// Create or change a Mahler context (only the flags given change).
    #[command(
        after_help = "Example:\n  mahler config set-context staging --kube-context kwok-mahler --project shop --env shop-staging --use"
    )]
    SetContext {
        name: String,
        /// Make it the current context.
        #[arg(long = "use")]
        use_it: bool,
    },
    /// Delete a Mahler context.
    #[command(after_help = "Example:\n  mahler config delete-context staging")]
    DeleteContext { name: String },
    /// The settings in effect and where each comes from.
    #[command(after_help = "Example:\n  MAHLER_ENV=shop-prod mahler config view")]
    View,
    /// The path of the config file.
    #[command(after_help = "Example:\n  mahler config path")]
    Path,
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    pub shell: clap_complete::Shell,
}

/// `90s`, `5m`, `1h30m`, `2h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0u64;
    let mut number = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{s:?}: expected a duration like 30s, 5m or 1h"))?;
        number.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(format!("{s:?}: units are s, m and h")),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .filter(|t| *t <= 10 * 365 * 86400)
            .ok_or_else(|| format!("{s:?}: too long"))?;
    }
    if !number.is_empty() || total == 0 {
        return Err(format!("{s:?}: expected a duration like 30s, 5m or 1h"));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every command a user runs has an example in its --help.
    #[test]
    fn every_command_has_an_example() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            let subs: Vec<&clap::Command> = cmd
                .get_subcommands()
                .filter(|c| c.get_name() != "help")
                .collect();
            if subs.is_empty() {
                let help = cmd
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                if !help.contains("Example") {
                    missing.push(path.clone());
                }
            }
            for sub in subs {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no example in --help: {missing:?}");
    }

    #[test]
    fn completions_for_each_shell() {
        for (shell, marker) in [
            (clap_complete::Shell::Bash, "complete -F _mahler"),
            (clap_complete::Shell::Zsh, "#compdef mahler"),
            (clap_complete::Shell::Fish, "complete -c mahler"),
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "mahler", &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.contains(marker),
                "{shell}: {}",
                &text[..200.min(text.len())]
            );
            assert!(text.contains("deploy"), "{shell}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("10m5").is_err());
        assert!(parse_duration("99999999999999999h").is_err());
    }
}
