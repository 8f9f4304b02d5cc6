//! Register with the backend: the saved uuid if there is one, else a new
//! instance. Outages are waited out with capped backoff, never a crash loop.

use crate::backend::{Backend, BackendError, Registration};
use crate::backoff::Backoff;
use crate::mqtt::topics::parse_topic_segment;
use crate::shutdown::Shutdown;

/// What registration needs to know.
pub struct RegistrationRequest<'a> {
    pub known_uuid: Option<&'a str>,
    pub slug_hint: Option<&'a str>,
    pub profile_slug: &'a str,
    /// What `telemetry::detect` found, sent along with the registration.
    pub hardware: Option<&'a serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("the backend returned an unusable {field} {value:?}: {problem}")]
    BadIdentity {
        field: &'static str,
        value: String,
        problem: crate::mqtt::topics::TopicSegmentError,
    },
    #[error("registration interrupted by shutdown")]
    Interrupted,
}

/// Registers, retrying transient failures with `backoff` until `shutdown`.
pub async fn register_with_retry(
    backend: &Backend,
    request: RegistrationRequest<'_>,
    backoff: Backoff,
    shutdown: &Shutdown,
) -> Result<Registration, RegistrationError> {
    // Once an instance is created, later attempts register *that* uuid: a
    // retry must never create a second instance.
    let mut known = request.known_uuid.map(str::to_owned);
    let mut attempt = 0;
    loop {
        let outcome = try_register(backend, &mut known, &request).await;
        match outcome {
            Ok(registration) => return validated(registration),
            Err(error) if error.is_transient() => {
                attempt += 1;
                let delay = backoff.delay(attempt);
                tracing::warn!(
                    "registration failed: {error}; retrying in {:.1}s (attempt {attempt})",
                    delay.as_secs_f64()
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => return Err(RegistrationError::Interrupted),
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
}

async fn try_register(
    backend: &Backend,
    known: &mut Option<String>,
    request: &RegistrationRequest<'_>,
) -> Result<Registration, BackendError> {
    let mut created_slug = None;
    if known.is_none() {
        let created = backend
            .create(request.profile_slug, request.slug_hint)
            .await?;
        tracing::info!(uuid = %created.uuid, slug = %created.slug, "created a new cloud-node instance");
        *known = Some(created.uuid);
        created_slug = Some(created.slug);
    }
    let uuid = known.clone().expect("set above");
    match backend
        .register(&uuid, request.profile_slug, request.hardware)
        .await
    {
        Ok(mut registration) => {
            if registration.slug.is_empty() {
                registration.slug = created_slug.unwrap_or_default();
            }
            Ok(registration)
        }
        Err(BackendError::NotFound { .. }) if created_slug.is_none() => {
            tracing::info!(%uuid, "the backend does not know instance {uuid}; creating a new one");
            *known = None;
            Box::pin(try_register(backend, known, request)).await
        }
        Err(error) => Err(error),
    }
}

fn validated(mut registration: Registration) -> Result<Registration, RegistrationError> {
    let check = |field: &'static str, value: &str| {
        parse_topic_segment(value).map_err(|problem| RegistrationError::BadIdentity {
            field,
            value: value.to_owned(),
            problem,
        })
    };
    registration.uuid = check("uuid", &registration.uuid)?;
    if registration.slug.is_empty() {
        // Some backends omit the slug on register; the uuid still addresses us.
        registration.slug = registration.uuid.clone();
    }
    registration.slug = check("slug", &registration.slug)?;
    Ok(registration)
}
