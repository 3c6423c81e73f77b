//! The front door's HTTP API: EC2's query protocol (what botocore, boto3 and the
//! aws CLI speak), so `aws ec2 --endpoint-url http://127.0.0.1:8773 run-instances
//! ...` drives this host as it drives EC2. Requests are form-encoded
//! (`Action=...&Version=2016-11-15&...`, POST body or GET query), answers are
//! EC2's XML documents, errors EC2's `<Response><Errors>` with its HTTP statuses.
//!
//! Every action is a thin layer over the launcher functions the CLI calls (see
//! actions.rs), so the CLI and the API cannot drift apart. Parameter and element
//! names come from EC2's own API model (model.rs), not from guesses.
//!
//! Authentication: requests are not verified (SigV4 signatures are accepted as
//! they come), so the server listens on loopback by default; it is a local front
//! door, as the rest of the state directory is. A 12-digit access key id names the
//! caller's account (a stand-in for IAM, so launch permissions can be exercised
//! from a client); any other key is the server's own account.

pub mod actions;
pub mod model;
pub mod query;
pub mod xml;

use std::io::Read;
use std::sync::Arc;
use std::thread::JoinHandle;

use model::Model;

use crate::error::{Ec2Error, ErrorCode};
use crate::launcher::paths::StatePaths;
use crate::launcher::Launcher;

/// Request bodies larger than this are refused (user data is at most 16 KiB, so
/// even a large RunInstances stays far below).
const MAX_BODY: u64 = 1 << 20;

/// What the server needs to open a launcher per request.
#[derive(Clone)]
pub struct ApiConfig {
    pub state_dir: std::path::PathBuf,
    /// The account of callers that do not name one.
    pub account: String,
}

/// Serve on `server` with `workers` threads (each request opens the launcher: state
/// lives in files shared with CLI invocations, which may change it meanwhile).
pub fn serve(config: ApiConfig, server: tiny_http::Server, workers: usize) -> Vec<JoinHandle<()>> {
    let server = Arc::new(server);
    (0..workers.max(1))
        .map(|_| {
            let server = Arc::clone(&server);
            let config = config.clone();
            std::thread::spawn(move || loop {
                let request = match server.recv() {
                    Ok(request) => request,
                    Err(error) => {
                        log::error!("api: receive failed: {error}");
                        return;
                    }
                };
                handle(&config, request);
            })
        })
        .collect()
}

fn request_id() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most bytes.len() bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // Request ids only correlate logs; time is unique enough then.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes = nanos.to_le_bytes();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The account a request acts as: a 12-digit access key id in its SigV4
/// credential, else the server's.
fn caller_account(request: &tiny_http::Request, default: &str) -> String {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| {
            let value = h.value.as_str();
            let credential = value.split("Credential=").nth(1)?;
            let key = credential.split('/').next()?;
            (key.len() == 12 && key.bytes().all(|b| b.is_ascii_digit())).then(|| key.to_string())
        })
        .unwrap_or_else(|| default.to_string())
}

fn handle(config: &ApiConfig, mut request: tiny_http::Request) {
    let id = request_id();
    let account = caller_account(&request, &config.account);
    let query = request
        .url()
        .split_once('?')
        .map(|(_, q)| q.to_string())
        .unwrap_or_default();
    let mut body = Vec::new();
    let read = request
        .as_reader()
        .take(MAX_BODY + 1)
        .read_to_end(&mut body);
    let outcome = match read {
        Err(e) => Err(Ec2Error::new(
            ErrorCode::MalformedQueryString,
            format!("cannot read the request body: {e}"),
        )),
        Ok(_) if body.len() as u64 > MAX_BODY => Err(Ec2Error::invalid_value(
            "The request body is larger than 1 MiB",
        )),
        Ok(_) => match String::from_utf8(body) {
            Ok(text) => answer(config, &account, &query, &text, &id),
            Err(_) => Err(Ec2Error::new(
                ErrorCode::MalformedQueryString,
                "The request body is not UTF-8",
            )),
        },
    };
    let (status, document, action) = match outcome {
        Ok((action, xml)) => (200, xml, action),
        Err(error) => {
            log::info!("api {id}: {}: {}", error.code.as_str(), error.message);
            (
                error.code.http_status(),
                xml::error(&error, &id),
                String::new(),
            )
        }
    };
    log::debug!("api {id}: {action} -> {status}");
    let response = tiny_http::Response::from_data(document)
        .with_status_code(status)
        .with_header(
            tiny_http::Header::from_bytes("Content-Type", "text/xml;charset=UTF-8")
                .expect("static header"),
        );
    if let Err(e) = request.respond(response) {
        log::warn!("api {id}: cannot answer: {e}");
    }
}

/// The action's XML, or the error to send.
fn answer(
    config: &ApiConfig,
    account: &str,
    url_query: &str,
    body: &str,
    request_id: &str,
) -> Result<(String, String), Ec2Error> {
    let mut params = query::parse_form(url_query)?;
    params.extend(query::parse_form(body)?);
    let action = params.get("Action").cloned().ok_or_else(|| {
        Ec2Error::new(
            ErrorCode::MissingAction,
            "The request must contain the parameter Action",
        )
    })?;
    let model = Model::get();
    let operation = model.operations.get(&action).ok_or_else(|| {
        Ec2Error::new(
            ErrorCode::InvalidAction,
            format!("The action {action} is not valid for this web service."),
        )
    })?;
    let input = match &operation.input {
        Some(shape) => query::to_json(model, shape, &params)?,
        None => serde_json::Value::Null,
    };
    let launcher = Launcher::open(StatePaths::new(&config.state_dir), account)?;
    let output = actions::dispatch(&launcher, &action, input)?;
    Ok((
        action.clone(),
        xml::response(model, &action, request_id, &output),
    ))
}
