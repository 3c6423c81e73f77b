//! EC2 query requests (`Action=RunInstances&ImageId=ami-...&Filter.1.Value.1=x`) to
//! the JSON the launcher and `--cli-input-json` use (`{"ImageId": ..., "Filters":
//! [{"Values": ["x"]}]}`), walking the operation's input shape. Lists are numbered
//! from 1 (EC2 lists are always "flattened" in queries); booleans are `true` /
//! `false`; numbers must parse. Parameters the shape does not know are refused, as
//! EC2 does (UnknownParameter), so a typo is not silently ignored.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Number, Value};

use super::model::{Model, Shape};
use crate::Ec2Error;

/// Decode `application/x-www-form-urlencoded` (also the URL's query string).
pub fn parse_form(body: &str) -> Result<BTreeMap<String, String>, Ec2Error> {
    let mut params = BTreeMap::new();
    for pair in body.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        params.insert(percent_decode(key)?, percent_decode(value)?);
    }
    Ok(params)
}

fn percent_decode(text: &str) -> Result<String, Ec2Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| malformed(format!("bad percent-encoding in {text:?}")))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| malformed(format!("{text:?} is not UTF-8")))
}

fn malformed(message: String) -> Ec2Error {
    Ec2Error::new(crate::error::ErrorCode::MalformedQueryString, message)
}

/// The request's parameters as JSON for `shape` (the operation's input shape).
/// `Action` and `Version` are the protocol's own and are skipped.
pub fn to_json(
    model: &Model,
    shape: &str,
    params: &BTreeMap<String, String>,
) -> Result<Value, Ec2Error> {
    let mut used = BTreeSet::new();
    let value = read_shape(model, shape, "", params, &mut used)?.unwrap_or(Value::Null);
    if let Some(unknown) = params
        .keys()
        .find(|k| !used.contains(*k) && *k != "Action" && *k != "Version")
    {
        return Err(Ec2Error::new(
            crate::error::ErrorCode::UnknownParameter,
            format!("The parameter {unknown} is not recognized"),
        ));
    }
    Ok(value)
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn has_prefix(params: &BTreeMap<String, String>, prefix: &str) -> bool {
    params.contains_key(prefix)
        || params
            .range(format!("{prefix}.")..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&format!("{prefix}.")))
}

fn read_shape(
    model: &Model,
    shape_name: &str,
    prefix: &str,
    params: &BTreeMap<String, String>,
    used: &mut BTreeSet<String>,
) -> Result<Option<Value>, Ec2Error> {
    let shape = model.shape(shape_name).ok_or_else(|| {
        Ec2Error::new(
            crate::error::ErrorCode::InternalError,
            format!("shape {shape_name} missing from the API model"),
        )
    })?;
    let scalar = |used: &mut BTreeSet<String>| -> Option<&String> {
        let v = params.get(prefix)?;
        used.insert(prefix.to_string());
        Some(v)
    };
    let invalid = |v: &str, what: &str| {
        Ec2Error::invalid_value(format!("Invalid value {v:?} for {prefix}: expected {what}"))
    };
    Ok(match shape {
        Shape::Structure { members } => {
            let mut object = Map::new();
            for (name, member) in members {
                let key = join(prefix, &member.query_name(name));
                if !has_prefix(params, &key) {
                    continue;
                }
                if let Some(v) = read_shape(model, &member.shape, &key, params, used)? {
                    object.insert(name.clone(), v);
                }
            }
            (!object.is_empty() || prefix.is_empty()).then_some(Value::Object(object))
        }
        Shape::List { member } => {
            let mut items = Vec::new();
            for index in 1.. {
                let key = format!("{prefix}.{index}");
                if !has_prefix(params, &key) {
                    break;
                }
                if let Some(v) = read_shape(model, &member.shape, &key, params, used)? {
                    items.push(v);
                }
            }
            Some(Value::Array(items))
        }
        Shape::String | Shape::Timestamp | Shape::Blob => {
            scalar(used).map(|v| Value::String(v.clone()))
        }
        Shape::Boolean => match scalar(used).map(String::as_str) {
            None => None,
            Some("true") => Some(Value::Bool(true)),
            Some("false") => Some(Value::Bool(false)),
            Some(other) => return Err(invalid(other, "true or false")),
        },
        Shape::Integer | Shape::Long => match scalar(used) {
            None => None,
            Some(v) => Some(Value::Number(
                v.parse::<i64>()
                    .map_err(|_| invalid(v, "an integer"))?
                    .into(),
            )),
        },
        Shape::Double => match scalar(used) {
            None => None,
            Some(v) => Some(Value::Number(
                v.parse::<f64>()
                    .ok()
                    .and_then(Number::from_f64)
                    .ok_or_else(|| invalid(v, "a number"))?,
            )),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(op: &str, body: &str) -> Result<Value, Ec2Error> {
        let model = Model::get();
        let input = model.operations[op].input.as_deref().unwrap();
        to_json(model, input, &parse_form(body)?)
    }

    #[test]
    fn lists_structures_and_scalars_follow_the_model() {
        let v = request(
            "DescribeInstances",
            "Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-1&InstanceId.2=i-2\
             &Filter.1.Name=instance-state-name&Filter.1.Value.1=running&Filter.1.Value.2=pending\
             &MaxResults=5",
        )
        .unwrap();
        assert_eq!(
            v,
            json!({
                "InstanceIds": ["i-1", "i-2"],
                "Filters": [{"Name": "instance-state-name", "Values": ["running", "pending"]}],
                "MaxResults": 5
            })
        );
        let v = request(
            "RunInstances",
            "Action=RunInstances&ImageId=ami-1&MinCount=1&MaxCount=2&UserData=ZWNobyBoaQ%3D%3D\
             &BlockDeviceMapping.1.DeviceName=%2Fdev%2Fvdb&BlockDeviceMapping.1.Ebs.VolumeSize=8\
             &BlockDeviceMapping.1.Ebs.DeleteOnTermination=false\
             &MetadataOptions.HttpTokens=required&Placement.AvailabilityZone=local-1a",
        )
        .unwrap();
        assert_eq!(
            v,
            json!({
                "ImageId": "ami-1", "MinCount": 1, "MaxCount": 2, "UserData": "ZWNobyBoaQ==",
                "BlockDeviceMappings": [{"DeviceName": "/dev/vdb",
                    "Ebs": {"VolumeSize": 8, "DeleteOnTermination": false}}],
                "MetadataOptions": {"HttpTokens": "required"},
                "Placement": {"AvailabilityZone": "local-1a"}
            })
        );
    }

    #[test]
    fn bad_parameters_are_refused() {
        let code = |op, body| request(op, body).unwrap_err().code;
        use crate::error::ErrorCode;
        assert_eq!(
            code("DescribeInstances", "InstanceIds.1=i-1"),
            ErrorCode::UnknownParameter
        );
        assert_eq!(
            code("RunInstances", "ImageId=a&MinCount=one&MaxCount=1"),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            code("StopInstances", "InstanceId.1=i-1&Force=yes"),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            code("DescribeImages", "Owner.1=%zz"),
            ErrorCode::MalformedQueryString
        );
    }
}
