//! The REST API on a Unix socket, shaped like Firecracker's.
//!
//! The API thread only parses and validates the shape of requests; every
//! request that touches the VM becomes an [`ApiRequest`] sent to the VMM
//! thread, which owns all state and replies with an [`ApiResponse`].

pub mod http;
pub mod snapshot;

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use serde::Deserialize;
use serde_json::{json, Value};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{from_json_slice, BootSource, DriveConfig, MachineConfig, NetConfig};
use http::{write_response, HttpError, Request, RequestReader};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ApiRequest {
    GetInfo,
    GetMachineConfig,
    PutMachineConfig(MachineConfig),
    GetBootSource,
    PutBootSource(BootSource),
    GetDrives,
    GetNetworkInterfaces,
    GetImds,
    GetVfs,
    /// (id from the path, body)
    PutVf(String, crate::config::VfConfig),
    /// The instance record (imds crate format), checked on the VMM thread.
    PutImds(serde_json::Value),
    /// (id from the path, body)
    PutNetworkInterface(String, NetConfig),
    /// (id from the path, body)
    PutDrive(String, DriveConfig),
    Action(ActionType),
    /// `PATCH /vm`: pause or resume.
    PatchVm(snapshot::VmRunState),
    CreateSnapshot(snapshot::SnapshotCreateParams),
    LoadSnapshot(snapshot::SnapshotLoadParams),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    /// `Value::Null` means no body (204).
    pub body: Value,
}

impl ApiResponse {
    pub fn ok(body: Value) -> Self {
        Self { status: 200, body }
    }

    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: Value::Null,
        }
    }

    /// Firecracker's error shape plus the field at fault, when known.
    pub fn error(status: u16, message: impl Into<String>, field: Option<&str>) -> Self {
        let mut body = json!({ "fault_message": message.into() });
        if let Some(f) = field {
            body["field"] = json!(f);
        }
        Self { status, body }
    }
}

pub struct ApiMessage {
    pub request: ApiRequest,
    pub reply: mpsc::Sender<ApiResponse>,
}

/// Turn an HTTP request into an API request, or the error to answer with.
pub fn route(req: &Request) -> Result<ApiRequest, ApiResponse> {
    let path = req.path.split('?').next().unwrap_or("");
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let method = req.method.as_str();
    let not_allowed = || {
        ApiResponse::error(
            405,
            format!("method {method} is not allowed on {path}"),
            None,
        )
    };
    match path {
        "/" => match method {
            "GET" => Ok(ApiRequest::GetInfo),
            _ => Err(not_allowed()),
        },
        "/machine-config" => match method {
            "GET" => Ok(ApiRequest::GetMachineConfig),
            "PUT" => parse_body::<MachineConfig>(&req.body, "machine-config")
                .map(ApiRequest::PutMachineConfig),
            _ => Err(not_allowed()),
        },
        "/boot-source" => match method {
            "GET" => Ok(ApiRequest::GetBootSource),
            "PUT" => {
                parse_body::<BootSource>(&req.body, "boot-source").map(ApiRequest::PutBootSource)
            }
            _ => Err(not_allowed()),
        },
        "/actions" => match method {
            "PUT" => parse_body::<ActionBody>(&req.body, "actions")
                .map(|b| ApiRequest::Action(b.action_type)),
            _ => Err(not_allowed()),
        },
        "/vm" => match method {
            "PATCH" => parse_body::<snapshot::VmStateBody>(&req.body, "vm")
                .map(|b| ApiRequest::PatchVm(b.state)),
            _ => Err(not_allowed()),
        },
        "/snapshot/create" => match method {
            "PUT" => parse_body(&req.body, "snapshot-create").map(ApiRequest::CreateSnapshot),
            _ => Err(not_allowed()),
        },
        "/snapshot/load" => match method {
            "PUT" => parse_body(&req.body, "snapshot-load").map(ApiRequest::LoadSnapshot),
            _ => Err(not_allowed()),
        },
        "/drives" => match method {
            "GET" => Ok(ApiRequest::GetDrives),
            _ => Err(not_allowed()),
        },
        "/network-interfaces" => match method {
            "GET" => Ok(ApiRequest::GetNetworkInterfaces),
            _ => Err(not_allowed()),
        },
        "/vfio-devices" => match method {
            "GET" => Ok(ApiRequest::GetVfs),
            _ => Err(not_allowed()),
        },
        "/imds" | "/mmds" => match method {
            "GET" => Ok(ApiRequest::GetImds),
            "PUT" => parse_body::<serde_json::Value>(&req.body, "imds").map(ApiRequest::PutImds),
            _ => Err(not_allowed()),
        },
        p if keyed(p, "/vfio-devices/").is_some() => match (keyed(p, "/vfio-devices/"), method) {
            (Some(id), "PUT") => parse_body::<crate::config::VfConfig>(&req.body, "vfio-device")
                .map(|v| ApiRequest::PutVf(id.to_string(), v)),
            _ => Err(not_allowed()),
        },
        p => match (
            keyed(p, "/drives/"),
            keyed(p, "/network-interfaces/"),
            method,
        ) {
            (Some(id), _, "PUT") => parse_body::<DriveConfig>(&req.body, "drive")
                .map(|d| ApiRequest::PutDrive(id.to_string(), d)),
            (_, Some(id), "PUT") => parse_body::<NetConfig>(&req.body, "network-interface")
                .map(|n| ApiRequest::PutNetworkInterface(id.to_string(), n)),
            (Some(_), _, _) | (_, Some(_), _) => Err(not_allowed()),
            _ => Err(ApiResponse::error(
                404,
                format!("no resource at {path}"),
                None,
            )),
        },
    }
}

/// The id in `/collection/{id}`, when `path` is one.
fn keyed<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix)
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiResponse> {
    if body.is_empty() {
        return Err(ApiResponse::error(
            400,
            format!("{what}: request body is empty"),
            None,
        ));
    }
    from_json_slice(body, what).map_err(|err| {
        ApiResponse::error(
            400,
            format!("{}: {}", err.field, err.reason),
            Some(&err.field),
        )
    })
}

/// Most simultaneous API connections; more are refused at once.
const MAX_CONNECTIONS: usize = 16;

pub struct ApiServer {
    pub path: PathBuf,
    _thread: JoinHandle<()>,
}

impl ApiServer {
    /// Bind `path` (which must not exist) and serve it from a thread.
    pub fn spawn(
        path: &Path,
        to_vmm: mpsc::Sender<ApiMessage>,
        wake: EventFd,
    ) -> io::Result<ApiServer> {
        let listener = UnixListener::bind(path)?;
        let active = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let stream = match conn {
                        Ok(s) => s,
                        Err(e) => {
                            log::warn!("api: accept failed: {e}");
                            continue;
                        }
                    };
                    if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
                        let mut s = stream;
                        let _ = write_response(&mut s, 503, b"", false);
                        continue;
                    }
                    active.fetch_add(1, Ordering::AcqRel);
                    let to_vmm = to_vmm.clone();
                    let wake = match wake.try_clone() {
                        Ok(w) => w,
                        Err(e) => {
                            log::error!("api: {e}");
                            active.fetch_sub(1, Ordering::AcqRel);
                            continue;
                        }
                    };
                    let active = Arc::clone(&active);
                    let spawned =
                        std::thread::Builder::new()
                            .name("api-conn".into())
                            .spawn(move || {
                                serve_connection(stream, &to_vmm, &wake);
                                active.fetch_sub(1, Ordering::AcqRel);
                            });
                    if let Err(e) = spawned {
                        log::error!("api: cannot spawn connection thread: {e}");
                    }
                }
            })?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            _thread: thread,
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_connection(stream: UnixStream, to_vmm: &mpsc::Sender<ApiMessage>, wake: &EventFd) {
    let mut out = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => {
            log::warn!("api: {e}");
            return;
        }
    };
    let mut reader = RequestReader::new(stream);
    loop {
        let req = match reader.next_request() {
            Ok(r) => r,
            Err(HttpError::Closed) => return,
            Err(HttpError::Io(e)) => {
                log::debug!("api: connection error: {e}");
                return;
            }
            Err(e) => {
                let body = json!({ "fault_message": e.to_string() }).to_string();
                let _ = write_response(&mut out, e.status(), body.as_bytes(), false);
                return;
            }
        };
        let response = match route(&req) {
            Ok(request) => dispatch(request, to_vmm, wake),
            Err(resp) => resp,
        };
        log::debug!("api: {} {} -> {}", req.method, req.path, response.status);
        let body = if response.body.is_null() {
            Vec::new()
        } else {
            response.body.to_string().into_bytes()
        };
        if write_response(&mut out, response.status, &body, req.keep_alive).is_err()
            || !req.keep_alive
        {
            return;
        }
    }
}

fn dispatch(request: ApiRequest, to_vmm: &mpsc::Sender<ApiMessage>, wake: &EventFd) -> ApiResponse {
    let (reply, wait) = mpsc::channel();
    let gone = || ApiResponse::error(500, "the VMM is shutting down", None);
    if to_vmm.send(ApiMessage { request, reply }).is_err() {
        return gone();
    }
    if wake.write(1).is_err() {
        return gone();
    }
    wait.recv().unwrap_or_else(|_| gone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
            keep_alive: true,
        }
    }

    #[test]
    fn routes_and_decodes() {
        assert_eq!(route(&req("GET", "/", "")).unwrap(), ApiRequest::GetInfo);
        assert_eq!(
            route(&req(
                "PUT",
                "/actions",
                r#"{"action_type":"InstanceStart"}"#
            ))
            .unwrap(),
            ApiRequest::Action(ActionType::InstanceStart)
        );
        match route(&req(
            "PUT",
            "/machine-config/",
            r#"{"vcpu_count":2,"mem_size_mib":256}"#,
        )) {
            Ok(ApiRequest::PutMachineConfig(m)) => {
                assert_eq!((m.vcpu_count, m.mem_size_mib), (2, 256))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn snapshot_routes() {
        assert_eq!(
            route(&req("PATCH", "/vm", r#"{"state":"Paused"}"#)).unwrap(),
            ApiRequest::PatchVm(snapshot::VmRunState::Paused)
        );
        let e = route(&req("PATCH", "/vm", r#"{"state":"Frozen"}"#)).unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(route(&req("PUT", "/vm", "{}")).unwrap_err().status, 405);
        match route(&req(
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_path":"/s","mem_file_path":"/m"}"#,
        )) {
            Ok(ApiRequest::CreateSnapshot(p)) => assert_eq!(p.mem_file_path.to_str(), Some("/m")),
            other => panic!("{other:?}"),
        }
        match route(&req(
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path":"/s","mem_file_path":"/m","resume_vm":true,
                "drive_overrides":[{"drive_id":"root","token":"t"}],
                "network_overrides":[{"iface_id":"eth0","host_dev_name":"tap1"}]}"#,
        )) {
            Ok(ApiRequest::LoadSnapshot(p)) => {
                assert!(p.resume_vm);
                assert_eq!(p.drive_overrides[0].token.as_deref(), Some("t"));
                assert_eq!(p.network_overrides[0].host_dev_name, "tap1");
            }
            other => panic!("{other:?}"),
        }
        let e = route(&req("PUT", "/snapshot/load", r#"{"snapshot_path":"/s"}"#)).unwrap_err();
        assert_eq!(e.body["field"], "mem_file_path");
    }

    #[test]
    fn keyed_resources_route_by_id() {
        let d = r#"{"drive_id":"root","path_on_host":"/x"}"#;
        match route(&req("PUT", "/drives/root", d)) {
            Ok(ApiRequest::PutDrive(id, drive)) => {
                assert_eq!((id.as_str(), drive.drive_id.as_str()), ("root", "root"))
            }
            other => panic!("{other:?}"),
        }
        let n = r#"{"iface_id":"eth0","host_dev_name":"tap0"}"#;
        assert!(matches!(
            route(&req("PUT", "/network-interfaces/eth0", n)),
            Ok(ApiRequest::PutNetworkInterface(..))
        ));
        assert_eq!(
            route(&req("GET", "/drives", "")).unwrap(),
            ApiRequest::GetDrives
        );
        assert_eq!(
            route(&req("GET", "/mmds", "")).unwrap(),
            ApiRequest::GetImds
        );
        assert_eq!(
            route(&req("DELETE", "/drives/root", ""))
                .unwrap_err()
                .status,
            405
        );
        // A trailing slash names the collection, which takes no PUT.
        assert_eq!(route(&req("PUT", "/drives/", d)).unwrap_err().status, 405);
        assert_eq!(
            route(&req("PUT", "/drives/a/b", d)).unwrap_err().status,
            404
        );
    }

    #[test]
    fn errors_name_status_and_field() {
        let e = route(&req("DELETE", "/machine-config", "")).unwrap_err();
        assert_eq!(e.status, 405);
        let e = route(&req("GET", "/nope", "")).unwrap_err();
        assert_eq!(e.status, 404);
        let e = route(&req(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":2,"mem_size_mib":256,"turbo":true}"#,
        ))
        .unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.body["field"], "turbo");
        let e = route(&req(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":"two","mem_size_mib":256}"#,
        ))
        .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.body["fault_message"]
            .as_str()
            .unwrap()
            .contains("invalid type"));
        assert_eq!(e.body["field"], "vcpu_count");
        let e = route(&req("PUT", "/actions", r#"{"action_type":"Explode"}"#)).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.body["fault_message"]
            .as_str()
            .unwrap()
            .contains("Explode"));
        let e = route(&req("PUT", "/boot-source", "")).unwrap_err();
        assert_eq!(e.status, 400);
    }
}
