//! `mahler-operator`: runs the Mahler controllers. See `--help`.

use clap::Parser;

#[tokio::main]
async fn main() {
    let args = mahler::operator::Args::parse();
    let tracing = match mahler::operator::init_logging(&args) {
        Ok(t) => t,
        Err(error) => {
            eprintln!("mahler-operator: {error}");
            std::process::exit(1);
        }
    };
    let result = mahler::operator::run(args).await;
    if let Err(error) = &result {
        tracing::error!("{error}");
    }
    tracing.shutdown();
    if result.is_err() {
        std::process::exit(1);
    }
}
