//! EC2's XML responses from the launcher's JSON, walking the operation's output
//! shape: members under their locationName (`reservationSet`, `instanceState`),
//! list elements as `<item>`, booleans `true`/`false`. JSON fields the model does
//! not know are left out (and logged): botocore would ignore them anyway, and the
//! unit test below keeps the launcher's output inside the model.

use serde_json::Value;

use super::model::{Model, Shape};
use crate::Ec2Error;

/// `<{Action}Response xmlns=...><requestId>..</requestId>...</{Action}Response>`.
pub fn response(model: &Model, action: &str, request_id: &str, body: &Value) -> String {
    let mut out = String::with_capacity(1024);
    out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    out.push('\n');
    out.push_str(&format!(
        r#"<{action}Response xmlns="{}/">"#,
        model.xml_namespace.trim_end_matches('/')
    ));
    element(&mut out, "requestId", request_id);
    let output = model
        .operations
        .get(action)
        .and_then(|o| o.output.as_deref());
    match output {
        Some(shape) => members(model, shape, body, &mut out),
        // Operations without output (EC2 answers `<return>true</return>`).
        None => element(&mut out, "return", "true"),
    }
    out.push_str(&format!("</{action}Response>"));
    out
}

/// EC2's error document (botocore reads Errors/Error/Code and Message).
pub fn error(error: &Ec2Error, request_id: &str) -> String {
    let mut out = String::new();
    out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    out.push_str("\n<Response><Errors><Error>");
    element(&mut out, "Code", error.code.as_str());
    element(&mut out, "Message", &error.message);
    out.push_str("</Error></Errors>");
    element(&mut out, "RequestID", request_id);
    out.push_str("</Response>");
    out
}

fn element(out: &mut String, name: &str, text: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    escape_into(out, text);
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 cannot carry most control characters even escaped; console
            // output is base64 on the wire, so only stray bytes in names land here.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
}

/// A structure's members (the caller wrote the enclosing element).
fn members(model: &Model, shape: &str, value: &Value, out: &mut String) {
    let (Some(Shape::Structure { members }), Some(object)) =
        (model.shape(shape), value.as_object())
    else {
        log::debug!("api: {shape} is not a structure for {value}");
        return;
    };
    for (name, field) in object {
        if field.is_null() {
            continue;
        }
        match members.get(name) {
            Some(member) => {
                let tag = member.xml_name(name);
                out.push('<');
                out.push_str(tag);
                out.push('>');
                write_value(model, &member.shape, field, out);
                out.push_str("</");
                out.push_str(tag);
                out.push('>');
            }
            None => log::debug!("api: {shape} has no member {name}; left out"),
        }
    }
}

fn write_value(model: &Model, shape: &str, value: &Value, out: &mut String) {
    match model.shape(shape) {
        Some(Shape::Structure { .. }) => members(model, shape, value, out),
        Some(Shape::List { member }) => {
            let tag = member.location_name.as_deref().unwrap_or("member");
            for item in value.as_array().map(Vec::as_slice).unwrap_or_default() {
                out.push('<');
                out.push_str(tag);
                out.push('>');
                write_value(model, &member.shape, item, out);
                out.push_str("</");
                out.push_str(tag);
                out.push('>');
            }
        }
        _ => match value {
            Value::String(s) => escape_into(out, s),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => out.push_str(&n.to_string()),
            other => escape_into(out, &other.to_string()),
        },
    }
}

/// JSON fields `shape` does not know, as dotted paths (for tests).
pub fn unknown_fields(model: &Model, shape: &str, value: &Value) -> Vec<String> {
    let mut found = Vec::new();
    walk_unknown(model, shape, value, "", &mut found);
    found
}

fn walk_unknown(model: &Model, shape: &str, value: &Value, path: &str, found: &mut Vec<String>) {
    match (model.shape(shape), value) {
        (Some(Shape::Structure { members }), Value::Object(object)) => {
            for (name, field) in object {
                let here = format!("{path}.{name}");
                match members.get(name) {
                    Some(m) => walk_unknown(model, &m.shape, field, &here, found),
                    None if field.is_null() => {}
                    None => found.push(here),
                }
            }
        }
        (Some(Shape::List { member }), Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                walk_unknown(model, &member.shape, item, &format!("{path}[{i}]"), found);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn members_use_location_names_and_lists_items() {
        let model = Model::get();
        let body = json!({
            "Reservations": [{
                "ReservationId": "r-1",
                "Instances": [{
                    "InstanceId": "i-1",
                    "State": {"Code": 16, "Name": "running"},
                    "EbsOptimized": false,
                    "Tags": [{"Key": "a<b", "Value": "x&y"}],
                    "NotInTheModel": 1
                }]
            }]
        });
        let xml = response(model, "DescribeInstances", "req-1", &body);
        assert!(xml.starts_with("<?xml"));
        assert!(xml.contains(
            r#"<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>req-1</requestId>"#
        ));
        // (Members come in the JSON object's order; botocore does not care.)
        assert!(xml.contains("<reservationSet><item><instancesSet><item>"));
        assert!(xml.contains("<instanceId>i-1</instanceId>"));
        assert!(xml
            .contains("</instancesSet><reservationId>r-1</reservationId></item></reservationSet>"));
        assert!(xml.contains("<instanceState><code>16</code><name>running</name></instanceState>"));
        assert!(xml.contains("<ebsOptimized>false</ebsOptimized>"));
        assert!(
            xml.contains("<tagSet><item><key>a&lt;b</key><value>x&amp;y</value></item></tagSet>")
        );
        assert!(!xml.contains("NotInTheModel"));
        assert_eq!(
            unknown_fields(model, "DescribeInstancesResult", &body),
            vec![".Reservations[0].Instances[0].NotInTheModel"]
        );
    }

    #[test]
    fn errors_are_ec2_error_documents() {
        let xml = error(&Ec2Error::invalid_value("bad <value>"), "req-2");
        assert!(xml.contains(
            "<Response><Errors><Error><Code>InvalidParameterValue</Code><Message>bad &lt;value&gt;</Message></Error></Errors><RequestID>req-2</RequestID></Response>"
        ));
    }
}
