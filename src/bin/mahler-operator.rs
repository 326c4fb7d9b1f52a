//! `mahler-operator`: runs the Mahler controllers. See `--help`.

use clap::Parser;

#[tokio::main]
async fn main() {
    let args = mahler::operator::Args::parse();
    mahler::operator::init_logging(&args.log_format);
    if let Err(error) = mahler::operator::run(args).await {
        tracing::error!(%error, "operator stopped");
        std::process::exit(1);
    }
}
