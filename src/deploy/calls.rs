//! What deployments answer while they run: `infer`, forwarded to the
//! model server's socket; `deployments`, every server's figures; and the
//! summary in `status`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::files::{DeployState, DeploymentRecord};
use super::listing::{format_of, listing};
use super::manager::{DeployError, DeployEvent, Deployments};
use super::{request, wire};

/// How long `deployments` waits for each server's figures.
const INFO_TIMEOUT: Duration = Duration::from_secs(2);

impl Deployments {
    /// Forwards an `infer` to its server; the answer comes as `Answer`.
    pub fn infer(&self, request_id: &str, params: &Map<String, Value>) -> Result<(), DeployError> {
        let id = request::deployment_id(params)?;
        let timeout = request::infer_timeout(params)?;
        let Some((paths, record)) = self.entries.get(&id) else {
            return Err(DeployError::NotFound {
                deployment_id: id,
                known: self.known_ids(),
            });
        };
        match record.state {
            DeployState::Ready => {}
            DeployState::Starting => return Err(DeployError::Loading { deployment_id: id }),
            DeployState::Failed => {
                return Err(DeployError::Failed {
                    deployment_id: id,
                    error: record.error.clone(),
                })
            }
            state @ (DeployState::Stopping | DeployState::Stopped) => {
                return Err(DeployError::Ended {
                    deployment_id: id,
                    state: state.name(),
                })
            }
        }
        let mut forwarded = params.clone();
        forwarded.remove("deployment_id");
        forwarded.remove("timeout_seconds");
        let call = json!({"op": "infer", "request": forwarded});
        let (socket, events, request_id) =
            (paths.socket(), self.units.clone(), request_id.to_owned());
        tokio::spawn(async move {
            let (stream_events, stream_id) = (events.clone(), request_id.clone());
            let on_event = move |output: Value| {
                let request_id = stream_id.clone();
                stream_events.send(DeployEvent::Streamed { request_id, output });
            };
            let outcome = wire::call_streaming(&socket, &call, timeout, on_event)
                .await
                .map_err(DeployError::from)
                .and_then(|reply| {
                    if reply["ok"] == true {
                        let mut output = reply["output"].clone();
                        output["deployment_id"] = json!(id);
                        Ok(output)
                    } else {
                        Err(DeployError::Refused(
                            reply["error"]
                                .as_str()
                                .unwrap_or("the model server refused the request")
                                .to_owned(),
                        ))
                    }
                });
            events.send(DeployEvent::Answer {
                request_id,
                outcome,
            });
        });
        Ok(())
    }

    /// Lists every deployment with its server's figures; answers as `Answer`.
    pub fn list(&self, request_id: &str) {
        let mut entries: Vec<(PathBuf, DeploymentRecord)> = self
            .entries
            .values()
            .map(|(p, r)| (p.socket(), r.clone()))
            .collect();
        entries.sort_by_key(|(_, r)| r.created_unix_ms);
        let (events, request_id) = (self.units.clone(), request_id.to_owned());
        tokio::spawn(async move {
            let mut queries = tokio::task::JoinSet::new();
            for (index, (socket, record)) in entries.into_iter().enumerate() {
                queries.spawn(async move {
                    let info = match record.state {
                        DeployState::Ready => {
                            wire::call(&socket, &json!({"op": "info"}), INFO_TIMEOUT)
                                .await
                                .ok()
                        }
                        DeployState::Starting
                        | DeployState::Stopping
                        | DeployState::Stopped
                        | DeployState::Failed => None,
                    };
                    (index, listing(&record, info.as_ref().map(|i| &i["info"])))
                });
            }
            let mut list = Vec::new();
            while let Some(Ok(row)) = queries.join_next().await {
                list.push(row);
            }
            list.sort_by_key(|(index, _)| *index);
            let list: Vec<Value> = list.into_iter().map(|(_, row)| row).collect();
            events.send(DeployEvent::Answer {
                request_id,
                outcome: Ok(json!({"deployments": list})),
            });
        });
    }

    /// The `deployments` summary of `status`.
    pub fn summary(&self) -> Vec<Value> {
        let mut records: Vec<&DeploymentRecord> = self.entries.values().map(|(_, r)| r).collect();
        records.sort_by_key(|r| r.created_unix_ms);
        records
            .iter()
            .map(|r| json!({"deployment_id": r.deployment_id, "model": r.model, "format": format_of(r), "state": r.state.name(), "pid": r.pid}))
            .collect()
    }

    pub(super) fn known_ids(&self) -> String {
        let mut ids: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        ids.sort_unstable();
        if ids.is_empty() {
            "none".into()
        } else {
            ids.join(", ")
        }
    }
}
