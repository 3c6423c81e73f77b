//! The HTTP/JSON control API: `POST /v1/<Action>` with an EC2-shaped JSON body (the same
//! field names as `aws ec2`), `GET /metrics` (Prometheus text) and `GET /healthz`.
//! Errors are `{"Error": {"Code": "<EC2 code>", "Message": "..."}}` with status 400
//! (caller's fault) or 500.

pub mod client;
mod direct;

use std::io::Read;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::control::snapshot::{
    CopySnapshotRequest, CreateSnapshotRequest, DeleteSnapshotRequest, DescribeSnapshotsRequest,
    EnableFastSnapshotRestoresRequest,
};
use crate::control::{
    AttachVolumeRequest, ControlError, CreateVolumeRequest, DescribeVolumesRequest,
    DetachVolumeRequest, ModifyVolumeRequest,
};
use crate::service::Service;

/// Largest request body accepted.
const MAX_BODY: u64 = 1 << 20;

/// One API request, independent of the transport.
pub struct ApiRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The raw query string (without '?').
    pub query: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl ApiRequest<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn query_parameter(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| percent_decode(value))
        })
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let decoded = (bytes[index] == b'%')
            .then(|| text.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (decoded, bytes[index]) {
            (Some(byte), _) => {
                out.push(byte);
                index += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                index += 1;
            }
            (None, byte) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The reply to one API call, independent of the transport.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ApiResponse {
    fn json(status: u16, value: &Value) -> Self {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        ApiResponse {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body,
        }
    }

    fn error(status: u16, code: &str, message: &str) -> Self {
        Self::json(
            status,
            &json!({"Error": {"Code": code, "Message": message}}),
        )
    }

    fn from_control_error(error: &ControlError) -> Self {
        let status = match error {
            ControlError::ResourceNotFound(_) => 404,
            ControlError::Conflict(_) => 409,
            error if error.is_client_error() => 400,
            _ => 500,
        };
        Self::error(status, error.code(), &error.to_string())
    }

    fn text(body: String) -> Self {
        ApiResponse {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            headers: Vec::new(),
            body: body.into_bytes(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct VolumeIdRequest {
    volume_id: String,
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiResponse> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}" as &[u8]
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|error| {
        ApiResponse::error(
            400,
            "InvalidParameterValue",
            &format!("invalid request body: {error}"),
        )
    })
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Routes one request. Public so tests can drive the API without sockets.
pub fn handle(service: &Arc<Service>, request: &ApiRequest) -> ApiResponse {
    match (request.method, request.path) {
        ("GET", "/healthz") => ApiResponse::text("ok\n".into()),
        ("GET", "/metrics") => ApiResponse::text(render_metrics(service)),
        ("POST", path) if path.starts_with("/v1/") => {
            let action = &path["/v1/".len()..];
            match dispatch(service, action, request.body) {
                Ok(value) => ApiResponse::json(200, &value),
                Err(response) => response,
            }
        }
        (_, path) if path.starts_with("/snapshots") => direct::route(service, request),
        ("POST", "/test/clock/advance") => advance_test_clock(service, request.body),
        (method, path) => ApiResponse::error(
            404,
            "NotFound",
            &format!("no route for {method} {path}; actions are POST /v1/<Action>"),
        ),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct AdvanceClockRequest {
    seconds: f64,
}

/// `POST /test/clock/advance {"Seconds": N}`: only with `ebsd serve --test-clock`.
fn advance_test_clock(service: &Service, body: &[u8]) -> ApiResponse {
    let request: AdvanceClockRequest = match parse(body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    if !request.seconds.is_finite() || request.seconds < 0.0 {
        return ApiResponse::error(400, "InvalidParameterValue", "Seconds must be >= 0");
    }
    match service.advance_test_clock(std::time::Duration::from_secs_f64(request.seconds)) {
        Ok(now) => ApiResponse::json(200, &json!({ "Now": now })),
        Err(error) => ApiResponse::error(404, "NotFound", &error.to_string()),
    }
}

fn dispatch(service: &Arc<Service>, action: &str, body: &[u8]) -> Result<Value, ApiResponse> {
    let control = |error: ControlError| ApiResponse::from_control_error(&error);
    let value = match action {
        "CreateVolume" => to_value(
            &service
                .create_volume(&parse::<CreateVolumeRequest>(body)?)
                .map_err(control)?,
        ),
        "DeleteVolume" => {
            let request: VolumeIdRequest = parse(body)?;
            service.delete_volume(&request.volume_id).map_err(control)?;
            json!({"Return": true})
        }
        "DescribeVolumes" => {
            let volumes = service
                .describe_volumes(&parse::<DescribeVolumesRequest>(body)?)
                .map_err(control)?;
            json!({ "Volumes": volumes })
        }
        "ModifyVolume" => {
            let modification = service
                .modify_volume(&parse::<ModifyVolumeRequest>(body)?)
                .map_err(control)?;
            json!({ "VolumeModification": modification })
        }
        "CreateTags" => service.create_tags(&parse(body)?).map_err(control)?,
        "DeleteTags" => service.delete_tags(&parse(body)?).map_err(control)?,
        "DescribeTags" => service.describe_tags(&parse(body)?).map_err(control)?,
        "DescribeVolumesModifications" => service
            .describe_volumes_modifications(&parse(body)?)
            .map_err(control)?,
        "AttachVolume" => to_value(
            &service
                .attach_volume(&parse::<AttachVolumeRequest>(body)?)
                .map_err(control)?,
        ),
        "CreateSnapshot" => to_value(
            &service
                .create_snapshot(&parse::<CreateSnapshotRequest>(body)?)
                .map_err(control)?,
        ),
        "DeleteSnapshot" => {
            let request: DeleteSnapshotRequest = parse(body)?;
            service
                .delete_snapshot(&request.snapshot_id)
                .map_err(control)?;
            json!({"Return": true})
        }
        "DescribeSnapshots" => {
            let snapshots = service
                .describe_snapshots(&parse::<DescribeSnapshotsRequest>(body)?)
                .map_err(control)?;
            json!({ "Snapshots": snapshots })
        }
        "CopySnapshot" => {
            let copy = service
                .copy_snapshot(&parse::<CopySnapshotRequest>(body)?)
                .map_err(control)?;
            json!({ "SnapshotId": copy.snapshot_id })
        }
        "EnableFastSnapshotRestores" => service
            .enable_fast_snapshot_restores(&parse::<EnableFastSnapshotRestoresRequest>(body)?)
            .map_err(control)?,
        "DetachVolume" => to_value(
            &service
                .detach_volume(&parse::<DetachVolumeRequest>(body)?)
                .map_err(control)?,
        ),
        other => {
            return Err(ApiResponse::error(
                400,
                "InvalidAction",
                &format!("The action {other} is not valid for this web service."),
            ))
        }
    };
    Ok(value)
}

/// Prometheus text exposition of every open volume's metrics.
pub fn render_metrics(service: &Service) -> String {
    let volumes = service.volume_metrics();
    let samples: Vec<_> = volumes
        .iter()
        .map(|volume| (volume, volume.samples()))
        .collect();
    let mut out = String::new();
    let family_count = samples.first().map_or(0, |(_, family)| family.len());
    for family in 0..family_count {
        let head = &samples[0].1[family];
        out.push_str(&format!(
            "# HELP {} {}\n# TYPE {} {}\n",
            head.name, head.help, head.name, head.kind
        ));
        for (volume, volume_samples) in &samples {
            out.push_str(&format!(
                "{}{{volume_id=\"{}\",volume_type=\"{}\"}} {}\n",
                head.name, volume.volume_id, volume.volume_type, volume_samples[family].value
            ));
        }
    }
    out
}

/// A way to (re)create the API's listener.
pub type BindApi = Box<dyn Fn() -> Result<tiny_http::Server, String> + Send>;
/// Whether the API answers a request (within the probe's own timeout).
pub type ProbeApi = Box<dyn Fn() -> bool + Send>;

/// How often the listener is probed, and how many failed probes in a row replace it.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
const PROBE_FAILURES: u32 = 3;

/// Serves the API with `workers` threads on `first`, for the life of the process, and
/// replaces the listener when it stops answering. tiny_http's accept thread ends at
/// the first failed accept (it reports the error) and panics when a descriptor cannot
/// be duplicated (EMFILE); either way its workers would wait forever: a deaf API while
/// NBD goes on, and every client hanging. So a probe asks the API every
/// `PROBE_INTERVAL`; after `PROBE_FAILURES` unanswered probes in a row, or a reported
/// accept error, the old workers are released and the listener is bound anew.
pub fn serve_resilient(
    service: Arc<Service>,
    first: tiny_http::Server,
    bind: BindApi,
    probe: ProbeApi,
    workers: usize,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut next = Ok(first);
        loop {
            match next {
                Ok(server) => {
                    let server = Arc::new(server);
                    let handles = serve_shared(Arc::clone(&service), Arc::clone(&server), workers);
                    let mut failures = 0;
                    loop {
                        thread::sleep(PROBE_INTERVAL);
                        if handles.iter().all(JoinHandle::is_finished) {
                            break; // an accept error released them
                        }
                        failures = if probe() { 0 } else { failures + 1 };
                        if failures >= PROBE_FAILURES {
                            log::error!("api: the listener stopped answering; replacing it");
                            // Each released worker releases the next (see serve_shared).
                            server.unblock();
                            break;
                        }
                    }
                    // The old server must be gone before the new one binds: dropping a
                    // tiny_http server removes its socket file.
                    for handle in handles {
                        let _ = handle.join();
                    }
                    drop(server);
                }
                Err(error) => {
                    log::error!("api: cannot bind the listener: {error}");
                    thread::sleep(PROBE_INTERVAL);
                }
            }
            next = bind();
        }
    })
}

/// Serves the API on `server` with `workers` threads; they all return once the
/// server's listener fails.
pub fn serve(
    service: Arc<Service>,
    server: tiny_http::Server,
    workers: usize,
) -> Vec<JoinHandle<()>> {
    serve_shared(service, Arc::new(server), workers)
}

fn serve_shared(
    service: Arc<Service>,
    server: Arc<tiny_http::Server>,
    workers: usize,
) -> Vec<JoinHandle<()>> {
    (0..workers.max(1))
        .map(|_| {
            let server = Arc::clone(&server);
            let service = Arc::clone(&service);
            thread::spawn(move || loop {
                let mut request = match server.recv() {
                    Ok(request) => request,
                    Err(error) => {
                        // The accept thread is gone (it reports one error, then ends)
                        // or the listener is being replaced: wake the next worker.
                        log::warn!("api: worker released: {error}");
                        server.unblock();
                        return;
                    }
                };
                let method = request.method().as_str().to_uppercase();
                let url = request.url().to_string();
                let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
                let headers: Vec<(String, String)> = request
                    .headers()
                    .iter()
                    .map(|header| {
                        (
                            header.field.as_str().as_str().to_string(),
                            header.value.as_str().to_string(),
                        )
                    })
                    .collect();
                let mut body = Vec::new();
                let read = request
                    .as_reader()
                    .take(MAX_BODY + 1)
                    .read_to_end(&mut body);
                let response = match read {
                    Err(error) => ApiResponse::error(
                        400,
                        "InvalidRequest",
                        &format!("cannot read body: {error}"),
                    ),
                    Ok(_) if body.len() as u64 > MAX_BODY => {
                        ApiResponse::error(413, "RequestTooLarge", "request body over 1 MiB")
                    }
                    Ok(_) => handle(
                        &service,
                        &ApiRequest {
                            method: &method,
                            path,
                            query,
                            headers: &headers,
                            body: &body,
                        },
                    ),
                };
                log::debug!("api: {method} {path} -> {}", response.status);
                let header = tiny_http::Header::from_bytes("Content-Type", response.content_type)
                    .unwrap_or_else(|()| {
                        tiny_http::Header::from_bytes("Content-Type", "text/plain")
                            .expect("static header")
                    });
                let mut reply = tiny_http::Response::from_data(response.body)
                    .with_status_code(response.status)
                    .with_header(header);
                for (field, value) in &response.headers {
                    if let Ok(extra) =
                        tiny_http::Header::from_bytes(field.as_bytes(), value.as_bytes())
                    {
                        reply.add_header(extra);
                    }
                }
                if let Err(error) = request.respond(reply) {
                    log::info!("api: reply failed: {error}");
                }
            })
        })
        .collect()
}
