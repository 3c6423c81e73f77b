//! The transport-agnostic request handler: path normalisation, listings, IMDSv1/v2 rules.
//!
//! Both front ends (host daemon, in-VMM responder) parse bytes into a [`Request`], pick
//! the instance, and call [`Handler::handle`]; the returned [`Response`] says which IP TTL
//! its packets need (token responses carry the hop limit).

use crate::config::{HttpTokens, Toggle};
use crate::credentials::CredentialIssuer;
use crate::error::ImdsError;
use crate::http::{Request, Response};
use crate::model::{InstanceMetadata, Leaf, Node, API_VERSIONS};
use crate::timefmt::iso8601;
use crate::token::{TokenSealer, MAX_TOKEN_TTL_SECONDS, MIN_TOKEN_TTL_SECONDS};

pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
pub const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_TTL_HEADER_CANONICAL: &str = "X-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_PATH: [&str; 3] = ["latest", "api", "token"];

/// Holds the host's secrets; shared by every instance a front end serves.
pub struct Handler {
    tokens: TokenSealer,
    credentials: CredentialIssuer,
}

impl Handler {
    pub fn new(tokens: TokenSealer, credentials: CredentialIssuer) -> Handler {
        Handler {
            tokens,
            credentials,
        }
    }

    /// A handler with fresh random secrets (what a VMM uses for its one guest).
    pub fn with_random_secrets() -> Result<Handler, ImdsError> {
        Ok(Handler::new(
            TokenSealer::random()?,
            CredentialIssuer::random()?,
        ))
    }

    /// Answers `request` for `instance` at wall-clock `now` (Unix seconds).
    pub fn handle(&self, instance: &InstanceMetadata, request: &Request, now: u64) -> Response {
        if instance.options.http_endpoint == Toggle::Disabled {
            return Response::text(403, "Forbidden");
        }
        let Some(path) = request_path(&request.target) else {
            return Response::bad_request();
        };
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();

        if segments == TOKEN_PATH {
            return match request.method.as_str() {
                "PUT" => self.issue_token(instance, request, now),
                _ => Response::text(405, "Method Not Allowed").with_header("Allow", "PUT"),
            };
        }
        match request.method.as_str() {
            "GET" => {}
            "PUT" => return Response::text(405, "Method Not Allowed").with_header("Allow", "GET"),
            _ => return Response::text(405, "Method Not Allowed").with_header("Allow", "GET, PUT"),
        }

        match request.header(TOKEN_HEADER) {
            Some(token) => {
                if let Err(rejection) = self.tokens.open(token, &instance.instance_id, now) {
                    log::debug!(
                        "instance {}: token rejected ({rejection:?})",
                        instance.instance_id
                    );
                    return Response::text(401, "Unauthorized");
                }
            }
            None if instance.options.http_tokens == HttpTokens::Required => {
                return Response::text(401, "Unauthorized");
            }
            None => {}
        }
        self.serve_path(instance, &segments, now)
    }

    fn issue_token(&self, instance: &InstanceMetadata, request: &Request, now: u64) -> Response {
        // A forwarded request came through a proxy: exactly what the hop limit guards against.
        if request.has_header("x-forwarded-for") {
            return Response::text(403, "Forbidden");
        }
        let ttl = match request
            .header(TOKEN_TTL_HEADER)
            .and_then(|value| value.parse::<u64>().ok())
        {
            Some(ttl) if (MIN_TOKEN_TTL_SECONDS..=MAX_TOKEN_TTL_SECONDS).contains(&ttl) => ttl,
            _ => return Response::text(400, "Bad Request"),
        };
        match self.tokens.seal(&instance.instance_id, now + ttl) {
            Ok(token) => {
                let mut response = Response::text(200, token)
                    .with_header(TOKEN_TTL_HEADER_CANONICAL, ttl.to_string());
                response.ip_ttl = Some(instance.options.http_put_response_hop_limit);
                response
            }
            Err(error) => {
                log::error!("instance {}: {error}", instance.instance_id);
                Response::text(503, "Service Unavailable")
            }
        }
    }

    fn serve_path(&self, instance: &InstanceMetadata, segments: &[&str], now: u64) -> Response {
        let Some((version, rest)) = segments.split_first() else {
            return Response::text(200, API_VERSIONS.join("\n"));
        };
        if !API_VERSIONS.contains(version) {
            return not_found();
        }
        if rest.is_empty() {
            return Response::text(200, instance.version_root.listing());
        }
        match instance.version_root.lookup(rest) {
            None => not_found(),
            Some(Node::Directory(directory)) => Response::text(200, directory.listing()),
            Some(Node::Leaf(leaf)) => {
                let content_type = if rest == ["user-data"] {
                    "application/octet-stream"
                } else {
                    "text/plain"
                };
                Response::new(200, content_type, self.leaf_body(instance, leaf, now))
            }
        }
    }

    fn leaf_body(&self, instance: &InstanceMetadata, leaf: &Leaf, now: u64) -> Vec<u8> {
        match leaf {
            Leaf::Static(bytes) => bytes.clone(),
            Leaf::RoleCredentials { role } => {
                let credentials = self
                    .credentials
                    .credentials(&instance.instance_id, role, now);
                serde_json::to_vec_pretty(&credentials).unwrap_or_default()
            }
            Leaf::IamInfo {
                instance_profile_arn,
                instance_profile_id,
            } => {
                let last_updated = iso8601(now - now % crate::credentials::ROTATION_SECONDS);
                serde_json::to_vec_pretty(&serde_json::json!({
                    "Code": "Success",
                    "LastUpdated": last_updated,
                    "InstanceProfileArn": instance_profile_arn,
                    "InstanceProfileId": instance_profile_id,
                }))
                .unwrap_or_default()
            }
        }
    }
}

fn not_found() -> Response {
    Response::text(404, "Not Found")
}

/// The path of a request target: origin form (`/a/b?q`) or absolute form
/// (`http://169.254.169.254/a/b`), without query or fragment. `None` for anything else.
fn request_path(target: &str) -> Option<&str> {
    let without_query = target.split(['?', '#']).next().unwrap_or("");
    if without_query.starts_with('/') {
        return Some(without_query);
    }
    let after_scheme = without_query.strip_prefix("http://")?;
    match after_scheme.find('/') {
        Some(slash) => Some(&after_scheme[slash..]),
        None => Some("/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::sample_record;
    use crate::http::{parse_request, Parsed};

    const NOW: u64 = 1_800_000_000;

    fn setup(
        configure: impl FnOnce(&mut crate::config::InstanceRecord),
    ) -> (Handler, InstanceMetadata) {
        let mut record = sample_record();
        configure(&mut record);
        let handler = Handler::new(
            TokenSealer::from_key([1; 32]),
            CredentialIssuer::from_hex(&"ab".repeat(16)).expect("hex"),
        );
        let metadata = InstanceMetadata::build(&record, None).expect("builds");
        (handler, metadata)
    }

    fn request(raw: &str) -> Request {
        match parse_request(raw.as_bytes()) {
            Ok(Parsed::Complete { request, .. }) => request,
            other => panic!("test request must parse: {other:?}"),
        }
    }

    fn get(
        handler: &Handler,
        metadata: &InstanceMetadata,
        path: &str,
        token: Option<&str>,
    ) -> Response {
        let token_line = token
            .map(|token| format!("X-aws-ec2-metadata-token: {token}\r\n"))
            .unwrap_or_default();
        handler.handle(
            metadata,
            &request(&format!("GET {path} HTTP/1.1\r\n{token_line}\r\n")),
            NOW,
        )
    }

    fn put_token(handler: &Handler, metadata: &InstanceMetadata, extra: &str) -> Response {
        handler.handle(
            metadata,
            &request(&format!("PUT /latest/api/token HTTP/1.1\r\n{extra}\r\n")),
            NOW,
        )
    }

    fn body(response: &Response) -> String {
        String::from_utf8_lossy(&response.body).into_owned()
    }

    #[test]
    fn paths_listings_and_normalisation() {
        let (handler, metadata) = setup(|_| {});
        let root = get(&handler, &metadata, "/", None);
        assert_eq!(root.status, 200);
        assert!(body(&root).lines().any(|line| line == "2009-04-04"));
        assert_eq!(body(&root).lines().last(), Some("latest"));

        for path in [
            "/latest/meta-data/placement/availability-zone",
            "/latest/meta-data/placement/availability-zone/",
            "/latest//meta-data//placement/availability-zone",
            "/2021-03-23/meta-data/placement/availability-zone",
            "http://169.254.169.254/latest/meta-data/placement/availability-zone?x=1",
        ] {
            let response = get(&handler, &metadata, path, None);
            assert_eq!(
                (response.status, body(&response)),
                (200, "eu-west-1b".into()),
                "{path}"
            );
        }
        let keys = get(&handler, &metadata, "/latest/meta-data/public-keys/", None);
        assert_eq!(body(&keys), "0=my-key");
        let key_dir = get(
            &handler,
            &metadata,
            "/latest/meta-data/public-keys/0/",
            None,
        );
        assert_eq!(body(&key_dir), "openssh-key");
        let identity = get(
            &handler,
            &metadata,
            "/latest/dynamic/instance-identity",
            None,
        );
        assert_eq!(body(&identity), "document");
        let meta = get(&handler, &metadata, "/latest/meta-data", None);
        assert!(body(&meta).lines().any(|line| line == "placement/"));
        assert!(body(&meta).lines().any(|line| line == "instance-id"));
        assert_eq!(
            get(&handler, &metadata, "/latest/meta-data/nope", None).status,
            404
        );
        assert_eq!(
            get(&handler, &metadata, "/1999-01-01/meta-data/", None).status,
            404
        );
        let user_data = get(&handler, &metadata, "/latest/user-data", None);
        assert_eq!(user_data.headers[0].1, "application/octet-stream");
        assert_eq!(body(&user_data), "#cloud-config\nhostname: test\n");
    }

    #[test]
    fn credentials_have_what_botocore_requires() {
        let (handler, metadata) = setup(|_| {});
        let roles = get(
            &handler,
            &metadata,
            "/latest/meta-data/iam/security-credentials/",
            None,
        );
        assert_eq!(body(&roles), "app-role");
        let response = get(
            &handler,
            &metadata,
            "/latest/meta-data/iam/security-credentials/app-role",
            None,
        );
        let json: serde_json::Value = serde_json::from_slice(&response.body).expect("JSON");
        for field in ["AccessKeyId", "SecretAccessKey", "Token", "Expiration"] {
            assert!(
                json[field].as_str().is_some_and(|v| !v.is_empty()),
                "{field}"
            );
        }
        assert_eq!(json["Type"], "AWS-HMAC");
        let info = get(&handler, &metadata, "/latest/meta-data/iam/info", None);
        let info: serde_json::Value = serde_json::from_slice(&info.body).expect("JSON");
        assert_eq!(info["InstanceProfileId"], "AIPAEXAMPLE");
    }

    #[test]
    fn token_issue_rules() {
        let (handler, metadata) = setup(|record| {
            record.metadata_options.http_put_response_hop_limit = 3;
        });
        let issued = put_token(
            &handler,
            &metadata,
            "X-aws-ec2-metadata-token-ttl-seconds: 60\r\n",
        );
        assert_eq!(issued.status, 200);
        assert_eq!(issued.ip_ttl, Some(3));
        assert!(issued
            .headers
            .iter()
            .any(|(name, value)| name.eq_ignore_ascii_case(TOKEN_TTL_HEADER) && value == "60"));
        for bad_ttl in [
            "",
            "X-aws-ec2-metadata-token-ttl-seconds: 0\r\n",
            "X-aws-ec2-metadata-token-ttl-seconds: 21601\r\n",
            "X-aws-ec2-metadata-token-ttl-seconds: abc\r\n",
        ] {
            assert_eq!(
                put_token(&handler, &metadata, bad_ttl).status,
                400,
                "{bad_ttl:?}"
            );
        }
        let forwarded = put_token(
            &handler,
            &metadata,
            "X-aws-ec2-metadata-token-ttl-seconds: 60\r\nX-Forwarded-For: 10.0.0.1\r\n",
        );
        assert_eq!(forwarded.status, 403);
        assert!(forwarded.ip_ttl.is_none());
        let get_token = get(&handler, &metadata, "/latest/api/token", None);
        assert_eq!(get_token.status, 405);
        assert!(get_token
            .headers
            .iter()
            .any(|(name, value)| *name == "Allow" && value == "PUT"));
        let delete = handler.handle(
            &metadata,
            &request("DELETE /latest/meta-data/ HTTP/1.1\r\n\r\n"),
            NOW,
        );
        assert_eq!(delete.status, 405);
        assert!(delete.headers.iter().any(|(name, _)| *name == "Allow"));
    }

    #[test]
    fn tokens_required_expired_forged_and_foreign() {
        let (handler, metadata) = setup(|record| {
            record.metadata_options.http_tokens = HttpTokens::Required;
        });
        let path = "/latest/meta-data/instance-id";
        assert_eq!(get(&handler, &metadata, path, None).status, 401);
        let issued = put_token(
            &handler,
            &metadata,
            "X-aws-ec2-metadata-token-ttl-seconds: 10\r\n",
        );
        let token = body(&issued);
        let ok = get(&handler, &metadata, path, Some(&token));
        assert_eq!(
            (ok.status, body(&ok)),
            (200, "i-0123456789abcdef0".to_string())
        );

        // Expired: same token ten seconds later.
        let later = handler.handle(
            &metadata,
            &request(&format!(
                "GET {path} HTTP/1.1\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n"
            )),
            NOW + 10,
        );
        assert_eq!(later.status, 401);
        assert_eq!(
            get(&handler, &metadata, path, Some("forged-token-value")).status,
            401
        );

        let (_, other_instance) = setup(|record| {
            record.instance_id = "i-other".to_string();
            record.metadata_options.http_tokens = HttpTokens::Required;
        });
        assert_eq!(
            get(&handler, &other_instance, path, Some(&token)).status,
            401
        );

        // With tokens optional a bad token is still refused rather than ignored.
        let (_, optional) = setup(|_| {});
        assert_eq!(get(&handler, &optional, path, Some("forged")).status, 401);
    }

    #[test]
    fn disabled_endpoint_answers_403() {
        let (handler, metadata) = setup(|record| {
            record.metadata_options.http_endpoint = Toggle::Disabled;
        });
        assert_eq!(
            get(&handler, &metadata, "/latest/meta-data/", None).status,
            403
        );
        let put = put_token(
            &handler,
            &metadata,
            "X-aws-ec2-metadata-token-ttl-seconds: 60\r\n",
        );
        assert_eq!(put.status, 403);
    }
}
