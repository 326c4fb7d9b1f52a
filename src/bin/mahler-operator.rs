//! `mahler-operator`: runs the Mahler controllers. See `--help`.

use clap::Parser;

#[tokio::main]
async fn main() {
    let args = mahler::operator::Args::parse();
    if let Err(error) = mahler::operator::init_logging(&args) {
        eprintln!("mahler-operator: {error}");
        std::process::exit(1);
    }
    if let Err(error) = mahler::operator::run(args).await {
        tracing::error!("{error}");
        std::process::exit(1);
    }
}
