//! approve: show the pending plan of a template Service, confirm on a
//! terminal, and set the approval annotations as the current user. The
//! plan-approval admission policy decides; its refusal comes back as one line.

use std::io::{BufRead, IsTerminal, Write};

use kube::api::{Api, Patch, PatchParams};
use mahler_api::Service;
use mahler_api::names::{APPROVE_ANNOTATION, APPROVED_BY_ANNOTATION};
use mahler_api::terraform::PlanPhase;

use super::{Ctx, FIELD_MANAGER};
use crate::args::ApproveArgs;
use crate::error::{CliError, Exit, Result};

pub async fn run(ctx: &Ctx, args: ApproveArgs) -> Result<()> {
    let ns = ctx.namespace().await?;
    let svc = ctx.cluster.service(&ns, &args.service).await?;
    let name = &args.service;
    if svc.spec.source.template.is_none() {
        return Err(CliError::usage(format!(
            "Service {name} is not a template Service: it has no plans to approve"
        )));
    }
    let plan = svc
        .status
        .as_ref()
        .and_then(|s| s.terraform.as_ref())
        .and_then(|t| t.plan.clone());
    let Some(plan) = plan.filter(|p| p.phase == PlanPhase::Pending) else {
        return Err(CliError::new(
            Exit::NotFound,
            format!("Service {name} has no plan awaiting approval"),
        )
        .hint(format!("`mahler explain {name}` says where it stands")));
    };
    if let Some(wanted) = &args.plan
        && wanted != &plan.id
    {
        return Err(CliError::failure(format!(
            "plan {wanted} is not the pending plan of {name}: the pending plan is {} (the spec or the infrastructure changed since)",
            plan.id
        ))
        .hint(format!("review it, then `mahler approve {name} --plan {}`", plan.id)));
    }
    let p = &ctx.printer;
    println!(
        "Plan {} for Service {name} in {ns} ({}): {} to add, {} to change, {} to destroy",
        p.bold(&plan.id),
        plan.trigger,
        p.green(&plan.add.to_string()),
        p.yellow(&plan.change.to_string()),
        p.red(&plan.destroy.to_string())
    );
    for r in &plan.resources {
        let action = match r.action.as_str() {
            "create" => p.green("+ create"),
            "delete" => p.red("- delete"),
            "replace" => p.red("± replace"),
            other => p.yellow(&format!("~ {other}")),
        };
        println!("  {action} {}", r.address);
    }
    let user = ctx.cluster.current_user().await?;
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::usage(
                "not a terminal: pass --yes to approve without confirmation",
            ));
        }
        print!("Approve plan {} as {user}? [y/N] ", plan.id);
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "Yes") {
            println!("Not approved.");
            return Err(CliError::failure("approval cancelled"));
        }
    }
    let patch = serde_json::json!({"metadata": {"annotations": {
        APPROVE_ANNOTATION: plan.id,
        APPROVED_BY_ANNOTATION: user,
    }}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    Api::<Service>::namespaced(ctx.client(), &ns)
        .patch(name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 403 || s.code == 422 || s.code == 400 => {
                CliError::new(
                    Exit::Forbidden,
                    format!("approval refused: {}", crate::error::api_message(&s)),
                )
            }
            e => ctx.cluster.err(&format!("Service {name}"))(e),
        })?;
    println!(
        "{} plan {} approved by {user}; the operator applies it next",
        p.green("✓"),
        plan.id
    );
    Ok(())
}
