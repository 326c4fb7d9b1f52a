//! One module per command group; [`run`] dispatches.

mod apply;
mod approve;
mod config;
mod logs;
mod objects;
mod read;

use clap::CommandFactory;

use crate::args::{Cli, Command, Output};
use crate::cluster::Cluster;
use crate::error::Result;
use crate::output::Printer;

/// The Server-Side Apply field manager of everything the CLI writes.
pub const FIELD_MANAGER: &str = "mahler-cli";

pub async fn run(cli: Cli) -> Result<()> {
    let global = cli.global.clone();
    match cli.command {
        Command::Config(cmd) => return config::run(&global, cmd),
        Command::Completion(args) => {
            let mut command = Cli::command();
            clap_complete::generate(args.shell, &mut command, "mahler", &mut std::io::stdout());
            return Ok(());
        }
        _ => {}
    }
    let cluster = Cluster::connect(&global).await?;
    let printer = Printer::new(cluster.settings.output.value, global.color);
    if !matches!(
        cli.command,
        Command::Service(crate::args::ServiceCommand::Create(_))
    ) && let Some(v) = global.variables().first()
    {
        return Err(crate::error::CliError::usage(format!(
            "--env {v}: variables (K=V) are set only by `mahler service create`; --env names an environment"
        )));
    }
    if !matches!(cli.command, Command::Graph(_)) {
        printer.only(
            &[
                Output::Table,
                Output::Wide,
                Output::Json,
                Output::Yaml,
                Output::Name,
            ],
            "only `mahler graph` prints dot and mermaid; this command",
        )?;
    }
    let ctx = Ctx {
        cluster,
        printer,
        global,
    };
    match cli.command {
        Command::Project(cmd) => objects::project(&ctx, cmd).await,
        Command::Env(cmd) => objects::env(&ctx, cmd).await,
        Command::Service(cmd) => objects::service(&ctx, cmd).await,
        Command::Connect(args) => objects::connect(&ctx, args).await,
        Command::Disconnect(args) => objects::disconnect(&ctx, args).await,
        Command::Apply(args) => apply::run(&ctx, args).await,
        Command::Deploy(args) => objects::deploy(&ctx, args).await,
        Command::Status(args) => read::status(&ctx, args.env.as_deref()).await,
        Command::Graph(args) => read::graph(&ctx, args.env.as_deref()).await,
        Command::Explain(args) => read::explain(&ctx, &args.name).await,
        Command::Logs(args) => logs::run(&ctx, args).await,
        Command::Approve(args) => approve::run(&ctx, args).await,
        Command::Config(_) | Command::Completion(_) => unreachable!("handled above"),
    }
}

/// What every command gets: the cluster, how to print, the global flags.
pub struct Ctx {
    pub cluster: Cluster,
    pub printer: Printer,
    pub global: crate::args::Global,
}

impl Ctx {
    pub fn client(&self) -> kube::Client {
        self.cluster.client.clone()
    }

    /// The namespace of the environment to work in.
    pub async fn namespace(&self) -> Result<String> {
        let name = self.cluster.environment_name(None)?;
        // Checked, so a typo says "did you mean" rather than "not found" later.
        let env = self.cluster.environment(&name).await?;
        Ok(env.namespace_name())
    }

    pub fn print(&self, text: &str) {
        print!("{text}");
    }
}
