//! The typed values of a template Service's `status.terraform`: what a run
//! did and how it ended, where a plan stands, the state lock, and why a run
//! failed. Each is a closed set, serialised as the same strings the status
//! has always shown (and compared with them: `phase == "Pending"`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A closed set of status strings: serde, schema (an `enum`), `as_str`,
/// `Display` and comparison with `&str`.
macro_rules! status_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(&self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant)),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }
    };
}

status_enum! {
    /// What an OpenTofu run did.
    #[derive(Default)]
    Operation {
        /// `tofu apply` (plan and apply, or an approved plan).
        #[default]
        Apply,
        /// `tofu plan` only: the plan waits for approval.
        Plan,
        /// `tofu plan` against the real infrastructure, applied or held by policy.
        DriftCheck,
        /// `tofu destroy`.
        Destroy,
    }
}

status_enum! {
    /// How a run ended.
    #[derive(Default)]
    RunResult {
        #[default]
        Succeeded,
        Failed,
        /// It ran past `--tofu-timeout-seconds` and was interrupted.
        TimedOut,
        /// Operator shutdown interrupted it.
        Cancelled,
        /// The state lock was held by someone who may still be working; nothing ran.
        Blocked,
    }
}

status_enum! {
    /// Where a plan stands.
    #[derive(Default)]
    PlanPhase {
        /// Awaits approval (manual approval, or drift held by policy).
        #[default]
        Pending,
        Applied,
        /// Replaced: the infrastructure matched the state again before approval.
        Superseded,
        NoChanges,
    }
}

status_enum! {
    /// Why a plan was made.
    #[derive(Default)]
    PlanTrigger {
        /// Every change creates a resource.
        #[default]
        Create,
        Update,
        /// A drift check found the infrastructure changed outside OpenTofu.
        Drift,
    }
}

status_enum! {
    /// The state lock, as the last run found it.
    #[derive(Default)]
    LockState {
        #[default]
        Free,
        /// A run of this operator holds it.
        Held,
        /// Someone else holds it.
        Blocked,
        /// An orphaned lock was released.
        Recovered,
    }
}

status_enum! {
    /// Which step of a run failed: the condition reason users see.
    FailureReason {
        /// `tofu init` (providers, module sources, backend).
        InitFailed,
        PlanFailed,
        ApplyFailed,
        DestroyFailed,
        /// The template declares an output the module does not define.
        OutputMissing,
        /// The outputs could not be read from the state.
        OutputFailed,
        /// OpenTofu could not be started, or its workspace not written.
        RunnerError,
    }
}

impl FailureReason {
    /// The prefix of the run's message (`init: ...`): the step, as users read it.
    pub fn step(&self) -> &'static str {
        match self {
            FailureReason::InitFailed => "init",
            FailureReason::PlanFailed => "plan",
            FailureReason::ApplyFailed => "apply",
            FailureReason::DestroyFailed => "destroy",
            FailureReason::OutputMissing | FailureReason::OutputFailed => "outputs",
            FailureReason::RunnerError => "run",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_serialise_as_their_names_and_compare_with_strings() {
        for phase in PlanPhase::ALL {
            let json = serde_json::to_string(phase).unwrap();
            assert_eq!(json, format!("\"{phase}\""));
            assert_eq!(serde_json::from_str::<PlanPhase>(&json).unwrap(), *phase);
        }
        assert!(PlanPhase::Pending == "Pending");
        assert_eq!(RunResult::Blocked.as_str(), "Blocked");
        assert_eq!(FailureReason::OutputMissing.step(), "outputs");
    }
}
