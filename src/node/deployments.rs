//! The node's side of model deployments: commands in, events out.

use serde_json::{Map, Value};

use super::commands::Reply;
use super::running::RunningNode;
use super::workloads::inherited_env;
use super::NodeError;
use crate::config::Settings;
use crate::deploy::manager::Report;
use crate::deploy::{DeployConfig, DeployEvent};
use crate::protocol::{CommandKind, DeployCommand, Event, Response};

/// The deployment settings.
pub(super) fn deploy_config(settings: &Settings) -> Result<DeployConfig, NodeError> {
    Ok(DeployConfig {
        config_dir: settings.config_dir.value.clone(),
        working_dir: settings.working_dir.clone(),
        model_roots: settings.model_roots(),
        onnxruntime_path: settings.onnxruntime_path.as_ref().map(|p| p.value.clone()),
        exe: std::env::current_exe().map_err(NodeError::OwnExecutable)?,
        shim: super::workloads::shim_path()?,
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
        let report = match event {
            DeployEvent::Launched {
                deployment_id,
                outcome,
            } => {
                let Some(request_id) = self.deployments.request_id_of(&deployment_id) else {
                    return;
                };
                let response = match self.deployments.on_launched(&deployment_id, outcome) {
                    Ok(output) => {
                        let mut response = Response::ok(&self.node, &request_id, output);
                        response.event = Some(Event::Started);
                        response
                    }
                    Err(error) => Response::error(&self.node, Some(&request_id), error),
                };
                self.respond(response).await;
                if let Some(seq) = self.unacked_starts.remove(&request_id) {
                    self.mqtt.ack(seq);
                }
                None
            }
            DeployEvent::Loaded {
                deployment_id,
                state,
            } => self.deployments.on_loaded(&deployment_id, state),
            DeployEvent::Exited { deployment_id } => self.deployments.on_exited(&deployment_id),
            DeployEvent::StopDeadline { deployment_id } => {
                self.deployments.on_stop_deadline(&deployment_id);
                None
            }
            DeployEvent::Streamed { request_id, output } => {
                let mut response = Response::ok(&self.node, &request_id, output);
                response.event = Some(Event::Token);
                self.respond(response).await;
                None
            }
            DeployEvent::Answer {
                request_id,
                outcome,
            } => {
                let response = match outcome {
                    Ok(output) => Response::ok(&self.node, &request_id, output),
                    Err(error) => Response::error(&self.node, Some(&request_id), error),
                };
                self.respond(response).await;
                None
            }
        };
        if let Some(report) = report {
            self.report_deployment(report).await;
        }
    }

    async fn report_deployment(&mut self, report: Report) {
        let mut response = match report.error {
            None => Response::ok(&self.node, &report.request_id, report.output),
            Some(error) => {
                let mut response = Response::error(&self.node, Some(&report.request_id), error);
                response.output = Some(report.output);
                response
            }
        };
        response.event = Some(report.event);
        self.publish_event(&report.outbox_name, response).await;
    }
}
