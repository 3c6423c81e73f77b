//! The slice of EC2's API model the HTTP API speaks (`shapes.json`, generated from
//! botocore's EC2 model by `scripts/gen-ec2-api-shapes.py`): for each operation its
//! input and output shape, and for each shape its members' wire names. The query
//! reader and the XML writer walk it, so field names on the wire are EC2's own
//! (`instancesSet`, `Filter.1.Value.1`, ...) rather than a guess from the JSON names.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Model {
    pub api_version: String,
    pub xml_namespace: String,
    pub operations: BTreeMap<String, Operation>,
    pub shapes: BTreeMap<String, Shape>,
}

#[derive(Debug, Deserialize)]
pub struct Operation {
    pub input: Option<String>,
    pub output: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Shape {
    Structure { members: BTreeMap<String, Member> },
    List { member: Member },
    String,
    Integer,
    Long,
    Double,
    Boolean,
    Timestamp,
    Blob,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub shape: String,
    pub location_name: Option<String>,
    pub query_name: Option<String>,
}

impl Member {
    /// The element name in XML responses (EC2: the locationName, else the member's
    /// own name).
    pub fn xml_name<'a>(&'a self, member: &'a str) -> &'a str {
        self.location_name.as_deref().unwrap_or(member)
    }

    /// The parameter name in query requests: queryName, else the locationName with
    /// its first letter upper-cased, else the member's name (botocore's EC2
    /// serializer rules).
    pub fn query_name(&self, member: &str) -> String {
        if let Some(q) = &self.query_name {
            return q.clone();
        }
        match &self.location_name {
            Some(l) => {
                let mut chars = l.chars();
                match chars.next() {
                    Some(first) => first.to_uppercase().chain(chars).collect(),
                    None => member.to_string(),
                }
            }
            None => member.to_string(),
        }
    }
}

impl Model {
    pub fn get() -> &'static Model {
        static MODEL: OnceLock<Model> = OnceLock::new();
        MODEL.get_or_init(|| {
            // Checked in and generated: a parse failure is a build defect, and the
            // unit tests load it.
            serde_json::from_str(include_str!("shapes.json"))
                .expect("ec2/src/api/shapes.json is valid (regenerate it)")
        })
    }

    pub fn shape(&self, name: &str) -> Option<&Shape> {
        self.shapes.get(name)
    }
}
