//! The commands the node knows, typed by family, and the workload kinds.
//!
//! A command's family decides who handles it (`node::commands` matches
//! [`CommandKind`] once, each family handler matches its own sub-enum), so
//! a new command does not compile until it is answered. The names are the
//! wire's: `command` fields, `workload_type` in records and events, the
//! `inference:`/`training:`/`simulate:` keys of `cyberwave.yml`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a workload command runs: one configured template each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    Inference,
    Training,
    Simulate,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 3] = [
        WorkloadKind::Inference,
        WorkloadKind::Training,
        WorkloadKind::Simulate,
    ];

    /// The wire and file name; the same as the serde form.
    pub const fn name(self) -> &'static str {
        match self {
            WorkloadKind::Inference => "inference",
            WorkloadKind::Training => "training",
            WorkloadKind::Simulate => "simulate",
        }
    }

    pub fn from_name(name: &str) -> Option<WorkloadKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The remote terminal's commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminalCommand {
    Open,
    Resize,
    Close,
}

/// The model deployment commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployCommand {
    Deploy,
    Infer,
    Undeploy,
    /// `deployments`: the list.
    List,
}

/// A command the node knows. A new variant (here or in a family) does not
/// compile until it is named ([`CommandKind::name`]), placed in the order
/// ([`CommandKind::after`], from which [`CommandKind::ALL`] is built) and
/// dispatched by the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    Workload(WorkloadKind),
    Status,
    Cancel,
    Terminal(TerminalCommand),
    Deployment(DeployCommand),
}

/// How many commands there are: [`CommandKind::ALL`] does not compile
/// while this disagrees with the chain of [`CommandKind::after`].
const COMMANDS: usize = 12;

impl CommandKind {
    /// Every command, in the order an "unknown command" error lists them:
    /// the chain of [`CommandKind::after`], built at compile time.
    pub const ALL: [CommandKind; COMMANDS] = {
        let mut all = [CommandKind::Status; COMMANDS];
        let mut next = Some(CommandKind::Workload(WorkloadKind::Inference));
        let mut count = 0;
        while let Some(kind) = next {
            // Out of bounds (a compile error) when COMMANDS is too small.
            all[count] = kind;
            count += 1;
            next = kind.after();
        }
        assert!(count == COMMANDS, "COMMANDS is larger than the chain");
        all
    };

    /// The command listed after this one. An exhaustive match: a new
    /// command does not compile until it has its place in the chain.
    const fn after(self) -> Option<CommandKind> {
        use CommandKind::{Deployment, Terminal, Workload};
        Some(match self {
            Workload(WorkloadKind::Inference) => Workload(WorkloadKind::Training),
            Workload(WorkloadKind::Training) => Workload(WorkloadKind::Simulate),
            Workload(WorkloadKind::Simulate) => CommandKind::Status,
            CommandKind::Status => CommandKind::Cancel,
            CommandKind::Cancel => Terminal(TerminalCommand::Open),
            Terminal(TerminalCommand::Open) => Terminal(TerminalCommand::Resize),
            Terminal(TerminalCommand::Resize) => Terminal(TerminalCommand::Close),
            Terminal(TerminalCommand::Close) => Deployment(DeployCommand::Deploy),
            Deployment(DeployCommand::Deploy) => Deployment(DeployCommand::Infer),
            Deployment(DeployCommand::Infer) => Deployment(DeployCommand::Undeploy),
            Deployment(DeployCommand::Undeploy) => Deployment(DeployCommand::List),
            Deployment(DeployCommand::List) => return None,
        })
    }

    /// The `command` field's value.
    pub const fn name(self) -> &'static str {
        match self {
            CommandKind::Workload(kind) => kind.name(),
            CommandKind::Status => "status",
            CommandKind::Cancel => "cancel",
            CommandKind::Terminal(TerminalCommand::Open) => "terminal_open",
            CommandKind::Terminal(TerminalCommand::Resize) => "terminal_resize",
            CommandKind::Terminal(TerminalCommand::Close) => "terminal_close",
            CommandKind::Deployment(DeployCommand::Deploy) => "deploy",
            CommandKind::Deployment(DeployCommand::Infer) => "infer",
            CommandKind::Deployment(DeployCommand::Undeploy) => "undeploy",
            CommandKind::Deployment(DeployCommand::List) => "deployments",
        }
    }

    pub fn from_name(name: &str) -> Option<CommandKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_parses_back_under_one_name() {
        let names: Vec<&str> = CommandKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(
            names.join(", "),
            "inference, training, simulate, status, cancel, terminal_open, terminal_resize, \
             terminal_close, deploy, infer, undeploy, deployments"
        );
        for kind in CommandKind::ALL {
            assert_eq!(CommandKind::from_name(kind.name()), Some(kind));
        }
        for kind in WorkloadKind::ALL {
            assert!(CommandKind::ALL.contains(&CommandKind::Workload(kind)));
        }
    }

    #[test]
    fn workload_kinds_serialise_as_their_names() {
        for kind in WorkloadKind::ALL {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.name());
            assert_eq!(serde_json::from_value::<WorkloadKind>(json).unwrap(), kind);
            assert_eq!(WorkloadKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(WorkloadKind::from_name("deploy"), None);
    }
}
