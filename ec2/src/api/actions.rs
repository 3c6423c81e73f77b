//! The API's actions: the request's JSON (EC2 member names, as `--cli-input-json`
//! takes them) to the same launcher calls the CLI makes, and the launcher's JSON
//! back. Differences from the CLI are the wire format's: user data and console
//! output are base64, RunInstances counts come as MinCount/MaxCount, and there is
//! no `--wait` (clients poll, or use the aws CLI's waiters).

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::cpu_credits::CreditMode;
use crate::error::{Ec2Error, ErrorCode};
use crate::images::{
    CopyImageRequest, DescribeImagesRequest, ModifyImageAttributeRequest, RegisterImageRequest,
};
use crate::instances::{
    validate_network_interfaces, Action, DescribeInstancesRequest, NetworkInterfaceRequest,
    ShutdownBehavior,
};
use crate::launcher::run::RunRequest;
use crate::launcher::Launcher;
use crate::shorthand::from_json;
use crate::user_data::UserData;

/// Run `action` with `input` (an object) for the launcher's account.
pub fn dispatch(launcher: &Launcher, action: &str, input: Value) -> Result<Value, Ec2Error> {
    let mut input = match input {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        other => {
            return Err(Ec2Error::invalid_value(format!(
                "request {other} is not a structure"
            )))
        }
    };
    if take_bool(&mut input, "DryRun")? == Some(true) {
        // EC2 checks permissions and answers with this "error"; here the caller
        // may do anything its account may.
        return Err(Ec2Error::new(
            ErrorCode::DryRunOperation,
            "Request would have succeeded, but DryRun flag is set.",
        ));
    }
    match action {
        "RunInstances" => run_instances(launcher, input),
        "DescribeInstances" => {
            // One page holds everything: a host runs a handful of instances.
            input.remove("MaxResults");
            input.remove("NextToken");
            let request: DescribeInstancesRequest = from_json(Value::Object(input))?;
            launcher.describe_instances(&request)
        }
        "StartInstances" => state_change(launcher, input, Action::Start),
        "StopInstances" => {
            let action = if take_bool(&mut input, "Hibernate")? == Some(true) {
                Action::Hibernate
            } else {
                Action::Stop
            };
            state_change(launcher, input, action)
        }
        "RebootInstances" => state_change(launcher, input, Action::Reboot),
        "TerminateInstances" => state_change(launcher, input, Action::Terminate),
        "GetConsoleOutput" => {
            input.remove("Latest");
            let id = take_string(&mut input, "InstanceId")?.ok_or_else(|| missing("InstanceId"))?;
            no_more(&input)?;
            let mut reply = launcher.console_output(&id)?;
            // The wire carries the console base64-encoded (the aws CLI decodes it).
            if let Some(text) = reply.get("Output").and_then(Value::as_str) {
                let encoded = base64::engine::general_purpose::STANDARD.encode(text);
                reply["Output"] = Value::String(encoded);
            }
            Ok(reply)
        }
        "DescribeInstanceStatus" => {
            input.remove("IncludeAllInstances");
            input.remove("MaxResults");
            input.remove("NextToken");
            let ids = take_strings(&mut input, "InstanceIds")?;
            no_more(&input)?;
            launcher.instance_status(&ids)
        }
        "DescribeInstanceTypes" => {
            input.remove("MaxResults");
            input.remove("NextToken");
            let names = take_strings(&mut input, "InstanceTypes")?;
            no_more(&input)?;
            crate::instance_types::describe(&names)
        }
        "DescribeImages" => {
            input.remove("MaxResults");
            input.remove("NextToken");
            input.remove("IncludeDeprecated");
            let request: DescribeImagesRequest = from_json(Value::Object(input))?;
            let images = launcher.images().describe(&request, &launcher.account)?;
            Ok(json!({ "Images": images }))
        }
        "RegisterImage" => {
            let request: RegisterImageRequest = from_json(Value::Object(input))?;
            if let Some(kernel) = &request.kernel_id {
                launcher.kernels().kernel_meta(kernel)?;
            }
            let image = launcher.images().register(
                &request,
                &launcher.account,
                &launcher.snapshot_ops(),
            )?;
            Ok(json!({ "ImageId": image.image_id }))
        }
        "DeregisterImage" => {
            let id = take_string(&mut input, "ImageId")?.ok_or_else(|| missing("ImageId"))?;
            no_more(&input)?;
            launcher.images().deregister(&id, &launcher.account)?;
            Ok(json!({ "Return": true }))
        }
        "CreateImage" => {
            let id = take_string(&mut input, "InstanceId")?.ok_or_else(|| missing("InstanceId"))?;
            let name = take_string(&mut input, "Name")?.ok_or_else(|| missing("Name"))?;
            let description = take_string(&mut input, "Description")?;
            let no_reboot = take_bool(&mut input, "NoReboot")?.unwrap_or(false);
            no_more(&input)?;
            launcher.create_image(&id, &name, description.as_deref(), no_reboot)
        }
        "CopyImage" => {
            let request: CopyImageRequest = from_json(Value::Object(input))?;
            let image = launcher.images().copy_image(
                &request,
                &launcher.account,
                &launcher.snapshot_ops(),
            )?;
            Ok(json!({ "ImageId": image.image_id }))
        }
        "ModifyImageAttribute" => {
            let request: ModifyImageAttributeRequest = from_json(Value::Object(input))?;
            launcher
                .images()
                .modify_attribute(&request, &launcher.account)?;
            Ok(Value::Null)
        }
        "DescribeImageAttribute" => {
            let id = take_string(&mut input, "ImageId")?.ok_or_else(|| missing("ImageId"))?;
            let attribute =
                take_string(&mut input, "Attribute")?.ok_or_else(|| missing("Attribute"))?;
            no_more(&input)?;
            launcher
                .images()
                .describe_attribute(&id, &attribute, &launcher.account)
        }
        "ModifyInstanceCreditSpecification" => {
            input.remove("ClientToken");
            let items = input
                .remove("InstanceCreditSpecifications")
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default();
            no_more(&input)?;
            let mut changes = Vec::new();
            for item in items {
                let id = item["InstanceId"]
                    .as_str()
                    .ok_or_else(|| missing("InstanceCreditSpecification.N.InstanceId"))?;
                let mode = item["CpuCredits"]
                    .as_str()
                    .ok_or_else(|| missing("InstanceCreditSpecification.N.CpuCredits"))?;
                changes.push((id.to_string(), mode.parse::<CreditMode>()?));
            }
            if changes.is_empty() {
                return Err(missing("InstanceCreditSpecification"));
            }
            launcher.modify_credit_specification(&changes)
        }
        "DescribeInstanceCreditSpecifications" => {
            input.remove("MaxResults");
            input.remove("NextToken");
            let ids = take_strings(&mut input, "InstanceIds")?;
            no_more(&input)?;
            launcher.describe_credit_specifications(&ids)
        }
        other => Err(Ec2Error::new(
            ErrorCode::InvalidAction,
            format!("The action {other} is not valid for this web service."),
        )),
    }
}

fn run_instances(launcher: &Launcher, mut input: Map<String, Value>) -> Result<Value, Ec2Error> {
    // The aws CLI and boto3 send an idempotency token with every call and reuse
    // it on a retry: the launcher deduplicates (client_token.rs).
    let client_token = take_string(&mut input, "ClientToken")?;
    let min = take_u32(&mut input, "MinCount")?.ok_or_else(|| missing("MinCount"))?;
    let max = take_u32(&mut input, "MaxCount")?.ok_or_else(|| missing("MaxCount"))?;
    if min == 0 || min > max {
        return Err(Ec2Error::invalid_value(format!(
            "MinCount ({min}) must be at least 1 and not more than MaxCount ({max})"
        )));
    }
    let user_data = take_string(&mut input, "UserData")?
        .map(|text| UserData::from_base64(&text))
        .transpose()?;
    let shutdown_behavior = match take_string(&mut input, "InstanceInitiatedShutdownBehavior")?
        .as_deref()
    {
        None | Some("stop") => ShutdownBehavior::Stop,
        Some("terminate") => ShutdownBehavior::Terminate,
        Some(other) => {
            return Err(Ec2Error::invalid_value(format!(
                "Value ({other}) for parameter instanceInitiatedShutdownBehavior is invalid. Valid values: stop, terminate"
            )))
        }
    };
    let hibernation = match input.remove("HibernationOptions") {
        Some(options) => options["Configured"].as_bool().unwrap_or(false),
        None => false,
    };
    let network_interfaces: Vec<NetworkInterfaceRequest> = match input.remove("NetworkInterfaces") {
        Some(list) => from_json(list)?,
        None => Vec::new(),
    };
    validate_network_interfaces(&network_interfaces)?;
    let credit_specification = match input.remove("CreditSpecification") {
        Some(spec) => Some(
            spec["CpuCredits"]
                .as_str()
                .ok_or_else(|| missing("CreditSpecification.CpuCredits"))?
                .parse::<CreditMode>()?,
        ),
        None => None,
    };
    let request = RunRequest {
        network_interfaces,
        credit_specification,
        image_id: take_string(&mut input, "ImageId")?,
        instance_type: take_string(&mut input, "InstanceType")?,
        // The host either has room for all of them or fails: Max is what EC2
        // launches when capacity allows.
        count: max,
        user_data,
        key_name: take_string(&mut input, "KeyName")?,
        block_device_mappings: match input.remove("BlockDeviceMappings") {
            Some(list) => from_json(list)?,
            None => Vec::new(),
        },
        metadata_options: input.remove("MetadataOptions").map(from_json).transpose()?,
        placement: input.remove("Placement").map(from_json).transpose()?,
        shutdown_behavior,
        hibernation,
        client_token,
    };
    no_more(&input)?;
    launcher.run_instances(&request)
}

fn state_change(
    launcher: &Launcher,
    mut input: Map<String, Value>,
    action: Action,
) -> Result<Value, Ec2Error> {
    let ids = take_strings(&mut input, "InstanceIds")?;
    if ids.is_empty() {
        return Err(missing("InstanceIds"));
    }
    let force = take_bool(&mut input, "Force")?.unwrap_or(false);
    input.remove("SkipOsShutdown");
    no_more(&input)?;
    let reply = launcher.change_state(&ids, action, force)?;
    // RebootInstances answers only `true`.
    Ok(if action == Action::Reboot {
        Value::Null
    } else {
        reply
    })
}

fn missing(name: &str) -> Ec2Error {
    Ec2Error::new(
        ErrorCode::MissingParameter,
        format!("The request must contain the parameter {name}"),
    )
}

/// Parameters left over are ones the model knows but this front door does not
/// implement: refuse them rather than ignore what the caller asked for.
fn no_more(input: &Map<String, Value>) -> Result<(), Ec2Error> {
    match input.keys().next() {
        None => Ok(()),
        Some(name) => Err(Ec2Error::new(
            ErrorCode::Unsupported,
            format!("The parameter {name} is not supported by this front door"),
        )),
    }
}

fn take_string(input: &mut Map<String, Value>, name: &str) -> Result<Option<String>, Ec2Error> {
    match input.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Ec2Error::invalid_value(format!(
            "{name} must be a string, not {other}"
        ))),
    }
}

fn take_strings(input: &mut Map<String, Value>, name: &str) -> Result<Vec<String>, Ec2Error> {
    match input.remove(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(list) => from_json(list),
    }
}

fn take_bool(input: &mut Map<String, Value>, name: &str) -> Result<Option<bool>, Ec2Error> {
    match input.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(other) => Err(Ec2Error::invalid_value(format!(
            "{name} must be true or false, not {other}"
        ))),
    }
}

fn take_u32(input: &mut Map<String, Value>, name: &str) -> Result<Option<u32>, Ec2Error> {
    match input.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| Ec2Error::invalid_value(format!("{name} must be a count, not {v}"))),
    }
}
