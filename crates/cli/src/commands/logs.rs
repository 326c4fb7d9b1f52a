//! logs: every container of a Service's pods (or of every Service of an
//! environment), read through the API server's pod log endpoint (the
//! kubelet proxy path), merged line by line with a prefix per pod. `-f`
//! follows until the streams end or Ctrl-C, which ends cleanly (exit 0).

use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, LogParams};
use mahler_api::names::SERVICE_LABEL;

use super::Ctx;
use crate::args::LogsArgs;
use crate::error::{CliError, Result};

/// Colours for pod prefixes, one per pod in turn.
const PALETTE: [anstyle::AnsiColor; 6] = [
    anstyle::AnsiColor::Cyan,
    anstyle::AnsiColor::Magenta,
    anstyle::AnsiColor::Blue,
    anstyle::AnsiColor::Green,
    anstyle::AnsiColor::Yellow,
    anstyle::AnsiColor::BrightCyan,
];

pub async fn run(ctx: &Ctx, args: LogsArgs) -> Result<()> {
    let ns = ctx.namespace().await?;
    let selector = match &args.service {
        Some(name) => {
            ctx.cluster.service(&ns, name).await?;
            format!("{SERVICE_LABEL}={name}")
        }
        None => SERVICE_LABEL.to_string(),
    };
    let pods_api = Api::<Pod>::namespaced(ctx.client(), &ns);
    let mut pods = pods_api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(ctx.cluster.err(&format!("the pods of {ns}")))?
        .items;
    pods.retain(|p| p.metadata.deletion_timestamp.is_none());
    pods.sort_by_key(|p| {
        (
            p.labels().get(SERVICE_LABEL).cloned().unwrap_or_default(),
            p.name_any(),
        )
    });
    if pods.is_empty() {
        let what = args
            .service
            .as_ref()
            .map(|s| format!("Service {s}"))
            .unwrap_or(format!("environment {ns}"));
        return Err(CliError::failure(format!("{what} has no pods"))
            .hint("`mahler status` shows its replicas"));
    }
    let params = LogParams {
        follow: args.follow,
        since_seconds: args.since.map(|d| d.as_secs() as i64),
        tail_lines: args.tail,
        timestamps: args.timestamps,
        ..Default::default()
    };
    let mut streams = Vec::new();
    let mut skipped = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let containers: Vec<String> = pod
            .spec
            .as_ref()
            .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        let several = containers.len() > 1;
        for container in containers {
            let prefix = if several {
                format!("{}/{container}", pod.name_any())
            } else {
                pod.name_any()
            };
            let style = PALETTE[i % PALETTE.len()].on_default();
            let prefix = if ctx.printer.color {
                format!("{style}[{prefix}]{style:#}")
            } else {
                format!("[{prefix}]")
            };
            let lp = LogParams {
                container: Some(container.clone()),
                ..params.clone()
            };
            // A pod that cannot serve logs (still starting, gone) is named
            // and skipped, as long as another one can.
            let reader = match pods_api.log_stream(&pod.name_any(), &lp).await {
                Ok(r) => r,
                Err(e) => {
                    let e = ctx
                        .cluster
                        .err(&format!("the logs of pod {}", pod.name_any()))(
                        e
                    );
                    if e.exit == crate::error::Exit::Forbidden {
                        return Err(e);
                    }
                    eprintln!("warning: skipping {}: {}", pod.name_any(), e.message);
                    skipped.push(e);
                    continue;
                }
            };
            let lines = reader
                .lines()
                .map_ok(move |line| format!("{prefix} {line}"))
                .boxed();
            streams.push(lines);
        }
    }
    if streams.is_empty()
        && let Some(first) = skipped.into_iter().next()
    {
        return Err(first);
    }
    let mut merged = futures::stream::select_all(streams);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    loop {
        tokio::select! {
            line = merged.next() => match line {
                None => break,
                Some(Ok(line)) => {
                    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                        // The reader went away (a closed pipe, `| head`).
                        break;
                    }
                }
                Some(Err(e)) => {
                    return Err(CliError::failure(format!("reading logs: {e}")));
                }
            },
            _ = &mut ctrl_c => break,
        }
    }
    Ok(())
}
