//! HTTP routes of the EBS direct APIs, with their paths, query parameters and x-amz-*
//! headers:
//!
//! ```text
//! POST /snapshots                              StartSnapshot (JSON body)
//! PUT  /snapshots/{id}/blocks/{index}          PutSnapshotBlock (binary body)
//! POST /snapshots/completion/{id}              CompleteSnapshot
//! GET  /snapshots/{id}/blocks                  ListSnapshotBlocks
//! GET  /snapshots/{id}/changedblocks           ListChangedBlocks
//! GET  /snapshots/{id}/blocks/{index}          GetSnapshotBlock (binary response)
//! ```

use std::sync::Arc;

use super::{parse, ApiRequest, ApiResponse};
use crate::control::ControlError;
use crate::service::direct::{Page, StartSnapshotRequest};
use crate::service::Service;

fn number<T: std::str::FromStr>(text: Option<&str>, name: &str) -> Result<Option<T>, ControlError> {
    text.map(|value| {
        value
            .trim()
            .parse::<T>()
            .map_err(|_| ControlError::Validation(format!("{name} {value:?} is not a number")))
    })
    .transpose()
}

fn page(request: &ApiRequest) -> Result<Page, ControlError> {
    Ok(Page {
        starting_index: number(
            request.query_parameter("startingBlockIndex").as_deref(),
            "startingBlockIndex",
        )?
        .unwrap_or(0),
        max_results: number(
            request.query_parameter("maxResults").as_deref(),
            "maxResults",
        )?,
        next_token: request.query_parameter("pageToken"),
    })
}

pub(super) fn route(service: &Arc<Service>, request: &ApiRequest) -> ApiResponse {
    let segments: Vec<&str> = request.path.trim_matches('/').split('/').collect();
    let result = match (request.method, segments.as_slice()) {
        ("POST", ["snapshots"]) => match parse::<StartSnapshotRequest>(request.body) {
            Ok(start) => service.start_snapshot(&start),
            Err(response) => return response,
        },
        ("PUT", ["snapshots", snapshot_id, "blocks", index]) => (|| {
            let index = number::<u64>(Some(index), "BlockIndex")?.unwrap_or(0);
            let checksum = request
                .header("x-amz-Checksum")
                .ok_or_else(|| ControlError::Validation("x-amz-Checksum is required".into()))?;
            let algorithm = request
                .header("x-amz-Checksum-Algorithm")
                .unwrap_or("SHA256");
            let length = number::<u64>(request.header("x-amz-Data-Length"), "x-amz-Data-Length")?;
            service.put_snapshot_block(
                snapshot_id,
                index,
                request.body,
                length,
                checksum,
                algorithm,
            )
        })(),
        ("POST", ["snapshots", "completion", snapshot_id]) => (|| {
            let count = number::<u64>(
                request.header("x-amz-ChangedBlocksCount"),
                "x-amz-ChangedBlocksCount",
            )?
            .ok_or_else(|| {
                ControlError::Validation("x-amz-ChangedBlocksCount is required".into())
            })?;
            service.complete_snapshot(
                snapshot_id,
                count,
                request.header("x-amz-Checksum"),
                request.header("x-amz-Checksum-Algorithm"),
                request.header("x-amz-Checksum-Aggregation-Method"),
            )
        })(),
        ("GET", ["snapshots", snapshot_id, "blocks"]) => {
            page(request).and_then(|page| service.list_snapshot_blocks(snapshot_id, &page))
        }
        ("GET", ["snapshots", snapshot_id, "changedblocks"]) => page(request).and_then(|page| {
            service.list_changed_blocks(
                request.query_parameter("firstSnapshotId").as_deref(),
                snapshot_id,
                &page,
            )
        }),
        ("GET", ["snapshots", snapshot_id, "blocks", index]) => {
            let block = (|| {
                let index = number::<u64>(Some(index), "BlockIndex")?.unwrap_or(0);
                let token = request
                    .query_parameter("blockToken")
                    .ok_or_else(|| ControlError::Validation("blockToken is required".into()))?;
                service.get_snapshot_block(snapshot_id, index, &token)
            })();
            return match block {
                Ok((data, checksum)) => ApiResponse {
                    status: 200,
                    content_type: "application/octet-stream",
                    headers: vec![
                        ("x-amz-Data-Length".into(), data.len().to_string()),
                        ("x-amz-Checksum".into(), checksum),
                        ("x-amz-Checksum-Algorithm".into(), "SHA256".into()),
                    ],
                    body: data,
                },
                Err(error) => ApiResponse::from_control_error(&error),
            };
        }
        (method, _) => {
            return ApiResponse::error(
                404,
                "NotFound",
                &format!("no EBS direct API route for {method} {}", request.path),
            )
        }
    };
    match result {
        Ok(value) => ApiResponse::json(200, &value),
        Err(error) => ApiResponse::from_control_error(&error),
    }
}
