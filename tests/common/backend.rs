//! A fake Cyberwave REST backend for the cloud-node endpoints.
//!
//! Deliberately tiny (std `TcpListener`, a thread per connection, HTTP/1.1
//! with `Connection: close`) so the test suite needs no web framework and
//! builds quickly on small CI machines. It records every request so tests can
//! assert on what the node sent, and has knobs to inject failures (revoked
//! token, forced status codes, slow answers, a "reaped" instance).

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::http::{read_request, write_response};

/// Every route lives under this prefix.
const PREFIX: &str = "/api/v1/cloud-node";

/// One request as the fake backend saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Upper-case HTTP method, e.g. `POST`.
    pub method: String,
    /// Request path without the query string.
    pub path: String,
    /// Raw query string (without `?`), empty if none.
    pub query: String,
    /// Header names lower-cased (HTTP header names are case-insensitive).
    pub headers: HashMap<String, String>,
    /// JSON body, `Value::Null` if empty or not JSON.
    pub body: Value,
}

impl Recorded {
    /// True if this request has `method` and its path ends with `suffix`
    /// (a trailing `/` on either side is ignored).
    pub fn matches(&self, method: &str, path_suffix: &str) -> bool {
        self.method.eq_ignore_ascii_case(method) && route_matches(&self.path, path_suffix)
    }
}

#[derive(Default)]
struct State {
    /// `None`: any non-empty token is accepted.
    tokens: Option<Vec<String>>,
    requests: Vec<Recorded>,
    /// uuid -> slug of the instances the backend knows about.
    instances: HashMap<String, String>,
    created: usize,
    reject_all: bool,
    slug_override: Option<String>,
    /// (method, path suffix, status)
    status_overrides: Vec<(String, String, u16)>,
    /// (method, path suffix, delay)
    delays: Vec<(String, String, Duration)>,
}

/// Handle to a running fake backend; dropping it stops the server.
pub struct FakeBackend {
    port: u16,
    state: Arc<Mutex<State>>,
    shutdown: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeBackend {
    /// Starts on a free port, accepting any non-empty token.
    pub fn start() -> FakeBackend {
        Self::launch(0, None)
    }

    /// Starts on a given port (e.g. to bring a "crashed" backend back on the
    /// URL the node already uses), accepting any non-empty token.
    pub fn start_on(port: u16) -> FakeBackend {
        Self::launch(port, None)
    }

    /// Starts on a free port, accepting only the listed tokens.
    pub fn start_with_tokens(tokens: &[&str]) -> FakeBackend {
        Self::launch(0, Some(tokens.iter().map(|t| t.to_string()).collect()))
    }

    fn launch(port: u16, tokens: Option<Vec<String>>) -> FakeBackend {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("fake backend: bind 127.0.0.1:{port}: {e}"));
        let port = listener.local_addr().expect("local addr").port();
        let state = Arc::new(Mutex::new(State {
            tokens,
            ..State::default()
        }));
        let shutdown = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let state = Arc::clone(&state);
            let shutdown = Arc::clone(&shutdown);
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if shutdown.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = conn else { continue };
                    let state = Arc::clone(&state);
                    thread::spawn(move || handle_connection(stream, &state));
                }
            })
        };
        FakeBackend {
            port,
            state,
            shutdown,
            acceptor: Some(acceptor),
        }
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Base URL to hand to the node as `CYBERWAVE_API_URL`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// All requests received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// Requests with `method` whose path ends with `path_suffix`.
    pub fn requests_matching(&self, method: &str, path_suffix: &str) -> Vec<Recorded> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.matches(method, path_suffix))
            .cloned()
            .collect()
    }

    /// Waits for the first matching request (including ones that already
    /// arrived). Recorded on arrival, i.e. possibly before it was answered.
    pub fn wait_for_request(
        &self,
        method: &str,
        path_suffix: &str,
        timeout: Duration,
    ) -> Option<Recorded> {
        poll(timeout, || {
            self.requests_matching(method, path_suffix)
                .into_iter()
                .next()
        })
    }

    /// Waits until at least `n` matching requests have arrived.
    pub fn wait_for_count(
        &self,
        method: &str,
        path_suffix: &str,
        n: usize,
        timeout: Duration,
    ) -> bool {
        poll(timeout, || {
            (self.requests_matching(method, path_suffix).len() >= n).then_some(())
        })
        .is_some()
    }

    /// Pre-registers an instance, as if created earlier by another run.
    pub fn add_instance(&self, uuid: &str, slug: &str) {
        self.lock()
            .instances
            .insert(uuid.to_string(), slug.to_string());
    }

    /// Makes an instance unknown (the backend "reaped" it): register and
    /// heartbeat for it then answer 404.
    pub fn forget_instance(&self, uuid: &str) {
        self.lock().instances.remove(uuid);
    }

    /// True if the backend currently knows `uuid`.
    pub fn has_instance(&self, uuid: &str) -> bool {
        self.lock().instances.contains_key(uuid)
    }

    /// How many instances were created through `POST /api/v1/cloud-node`.
    pub fn created_count(&self) -> usize {
        self.lock().created
    }

    /// Answers every request with 401, simulating a revoked token.
    pub fn set_reject_all(&self, reject: bool) {
        self.lock().reject_all = reject;
    }

    /// Makes create ignore the slug hint and assign this slug instead.
    pub fn set_slug_override(&self, slug: Option<&str>) {
        self.lock().slug_override = slug.map(str::to_string);
    }

    /// Forces `status` (body `{"detail":"forced"}`) for matching routes;
    /// `None` removes the override. Auth is still checked first.
    pub fn set_status_override(&self, method: &str, path_suffix: &str, status: Option<u16>) {
        let mut st = self.lock();
        st.status_overrides
            .retain(|(m, p, _)| !(m.eq_ignore_ascii_case(method) && p == path_suffix));
        if let Some(status) = status {
            st.status_overrides
                .push((method.to_string(), path_suffix.to_string(), status));
        }
    }

    /// Delays answers to matching routes (the request is recorded at once).
    /// `Duration::ZERO` removes the delay.
    pub fn set_delay(&self, method: &str, path_suffix: &str, delay: Duration) {
        let mut st = self.lock();
        st.delays
            .retain(|(m, p, _)| !(m.eq_ignore_ascii_case(method) && p == path_suffix));
        if !delay.is_zero() {
            st.delays
                .push((method.to_string(), path_suffix.to_string(), delay));
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        // `accept` blocks; a throw-away connection wakes it so it sees the flag
        // and drops the listener, releasing the port.
        let _ =
            TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_secs(1));
        if let Some(handle) = self.acceptor.take() {
            let _ = handle.join();
        }
    }
}

/// A poisoned lock only means another handler thread panicked; the state is
/// still usable and tests should keep going to report the real failure.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn route_matches(path: &str, suffix: &str) -> bool {
    path.trim_end_matches('/')
        .ends_with(suffix.trim_end_matches('/'))
}

fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn handle_connection(stream: TcpStream, state: &Mutex<State>) {
    // Never let a half-sent request pin a thread forever.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let Some(req) = read_request(read_half) else {
        return;
    };
    let (status, body, delay) = {
        let mut st = lock(state);
        st.requests.push(req.clone());
        let delay = st
            .delays
            .iter()
            .find(|(m, p, _)| req.matches(m, p))
            .map(|(_, _, d)| *d);
        let (status, body) = respond(&mut st, &req);
        (status, body, delay)
    };
    if let Some(delay) = delay {
        thread::sleep(delay);
    }
    write_response(stream, status, &body);
}

/// Decides the answer: auth, injected failures, then the route table.
fn respond(st: &mut State, req: &Recorded) -> (u16, Value) {
    let unauthorized = (401, json!({"detail": "Invalid token."}));
    if st.reject_all {
        return unauthorized;
    }
    let token = req
        .headers
        .get("authorization")
        .and_then(|v| v.strip_prefix("Token "))
        .map(str::trim)
        .unwrap_or("");
    let allowed = match &st.tokens {
        Some(tokens) => tokens.iter().any(|t| t == token),
        None => !token.is_empty(),
    };
    if !allowed {
        return unauthorized;
    }
    if let Some((_, _, status)) = st
        .status_overrides
        .iter()
        .find(|(m, p, _)| req.matches(m, p))
    {
        return (*status, json!({"detail": "forced"}));
    }
    let not_found = (404, json!({"detail": "Not found."}));
    let Some(rest) = req.path.trim_end_matches('/').strip_prefix(PREFIX) else {
        return not_found;
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["instances"]) => (200, json!([])),
        ("POST", []) => create_instance(st, &req.body),
        ("POST", ["terminated"]) | ("POST", ["failed"]) => (200, json!({})),
        ("POST", [uuid, "register"]) => match st.instances.get(*uuid) {
            Some(slug) => (
                200,
                json!({"success": true, "message": "registered", "uuid": uuid, "slug": slug}),
            ),
            None => not_found,
        },
        ("POST", [uuid, "heartbeat"]) if st.instances.contains_key(*uuid) => (200, json!({})),
        _ => not_found,
    }
}

fn create_instance(st: &mut State, body: &Value) -> (u16, Value) {
    let uuid = uuid::Uuid::new_v4().to_string();
    let slug = match (&st.slug_override, body.get("slug").and_then(Value::as_str)) {
        (Some(forced), _) => forced.clone(),
        (None, Some(hint)) if !hint.is_empty() => hint.to_string(),
        _ => format!("node-{}", &uuid[..8]),
    };
    st.instances.insert(uuid.clone(), slug.clone());
    st.created += 1;
    let profile = body.get("profile_slug").cloned().unwrap_or(Value::Null);
    (
        201,
        json!({"uuid": uuid, "slug": slug, "profile_slug": profile}),
    )
}
