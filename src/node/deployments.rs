//! The node's side of model deployments: commands in, events out.

use serde_json::{Map, Value};

use super::commands::Reply;
use super::running::RunningNode;
use super::workloads::inherited_env;
use super::NodeError;
use crate::config::Settings;
use crate::deploy::{DeployConfig, DeployEvent};
use crate::protocol::{CommandKind, DeployCommand, Response};

/// The deployment settings.
pub(super) fn deploy_config(
    settings: &Settings,
    shim: &std::path::Path,
) -> Result<DeployConfig, NodeError> {
    Ok(DeployConfig {
        config_dir: settings.config_dir.value.clone(),
        working_dir: settings.working_dir.clone(),
        model_roots: settings.model_roots(),
        onnxruntime_path: settings.onnxruntime_path.as_ref().map(|p| p.value.clone()),
        exe: std::env::current_exe().map_err(NodeError::OwnExecutable)?,
        shim: shim.to_owned(),
        base_env: inherited_env(settings),
    })
}

impl RunningNode {
    pub(super) fn on_deploy_command(
        &mut self,
        command: DeployCommand,
        request_id: &str,
        params: &Map<String, Value>,
    ) -> Reply {
        let outcome = match command {
            DeployCommand::Deploy => self
                .deployments
                .deploy(request_id, params)
                .map(|()| Reply::AfterLaunch(request_id.to_owned())),
            DeployCommand::Infer => self
                .deployments
                .infer(request_id, params)
                .map(|()| Reply::Later),
            DeployCommand::Undeploy => self
                .deployments
                .undeploy(params)
                .map(|output| Reply::Now(Response::ok(&self.node, request_id, output))),
            DeployCommand::List => {
                self.deployments.list(request_id);
                Ok(Reply::Later)
            }
        };
        outcome.unwrap_or_else(|error| {
            tracing::info!(
                request_id,
                "refused {}: {error}",
                CommandKind::Deployment(command)
            );
            Reply::Now(Response::error(&self.node, Some(request_id), error))
        })
    }

    pub(super) async fn on_deploy_event(&mut self, event: DeployEvent) {
        let outgoing = self.deployments.handle(event);
        // A model server that ended freed its GPUs: a workload waiting in
        // the queue for them starts now.
        let unstarted = self.workloads.start_queued();
        if let Some(outgoing) = outgoing {
            self.send_outgoing(outgoing).await;
        }
        for terminal in unstarted {
            self.report(terminal).await;
        }
    }
}
