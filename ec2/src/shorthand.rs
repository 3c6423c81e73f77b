//! The `aws` CLI's parameter syntaxes, so the front door's CLI accepts what people type:
//! JSON (`'[{"DeviceName":"/dev/xvda","Ebs":{"VolumeSize":8}}]'`) or shorthand
//! (`DeviceName=/dev/xvda,Ebs={VolumeSize=8,VolumeType=gp3}`,
//! `HttpTokens=required,HttpPutResponseHopLimit=2`, `Name=tag:env,Values=a,b`).
//!
//! Shorthand leaves are strings (the CLI only converts them with the operation's model);
//! request types therefore read numbers and booleans leniently (see [`lenient`]).

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Ec2Error, ErrorCode};

/// Parses one argument: JSON when it starts with `{` or `[`, shorthand otherwise.
pub fn parse_argument(parameter: &str, text: &str) -> Result<Value, Ec2Error> {
    let trimmed = text.trim();
    let fail = |detail: String| {
        Ec2Error::invalid_value(format!("Error parsing parameter '{parameter}': {detail}"))
    };
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        return serde_json::from_str(trimmed)
            .map_err(|error| fail(format!("Invalid JSON: {error}")));
    }
    let mut parser = Parser {
        chars: trimmed.chars().collect(),
        pos: 0,
    };
    let value = parser.structure(None).map_err(fail)?;
    if parser.pos < parser.chars.len() {
        return Err(fail(format!(
            "unexpected '{}' at position {}",
            parser.chars[parser.pos], parser.pos
        )));
    }
    Ok(Value::Object(value))
}

/// Parses a list parameter given as several arguments (`--filters A B`): each argument
/// is a JSON list (spliced in), a JSON object, or one shorthand structure.
pub fn parse_list_arguments(parameter: &str, arguments: &[String]) -> Result<Vec<Value>, Ec2Error> {
    let mut items = Vec::new();
    for argument in arguments {
        match parse_argument(parameter, argument)? {
            Value::Array(list) => items.extend(list),
            other => items.push(other),
        }
    }
    Ok(items)
}

/// Deserialises a request from JSON, with EC2's codes: an unknown field is
/// `UnknownParameter`-like `InvalidParameter`, anything else `InvalidParameterValue`.
pub fn from_json<T: DeserializeOwned>(value: Value) -> Result<T, Ec2Error> {
    serde_json::from_value(value).map_err(|error| {
        let text = error.to_string();
        if text.starts_with("unknown field") {
            Ec2Error::new(
                ErrorCode::InvalidParameter,
                format!("The parameter is not recognized: {text}"),
            )
        } else {
            Ec2Error::invalid_value(text)
        }
    })
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(|c| c == ' ') {
            self.pos += 1;
        }
    }

    fn expect(&mut self, wanted: char) -> Result<(), String> {
        match self.peek() {
            Some(c) if c == wanted => {
                self.pos += 1;
                Ok(())
            }
            Some(c) => Err(format!(
                "Expected: '{wanted}', received: '{c}' at position {}",
                self.pos
            )),
            None => Err(format!("Expected: '{wanted}', received: end of input")),
        }
    }

    /// `key=value[,key=value]*` up to `closing` (or the end of input).
    fn structure(&mut self, closing: Option<char>) -> Result<Map<String, Value>, String> {
        let mut map = Map::new();
        loop {
            self.skip_spaces();
            if self.peek() == closing || self.peek().is_none() {
                return Ok(map);
            }
            let start = self.pos;
            while self
                .peek()
                .is_some_and(|c| !matches!(c, '=' | ',' | '{' | '}' | '[' | ']'))
            {
                self.pos += 1;
            }
            let key: String = self.chars[start..self.pos]
                .iter()
                .collect::<String>()
                .trim()
                .to_string();
            if key.is_empty() {
                return Err(format!("Expected a key at position {start}"));
            }
            self.expect('=')?;
            let mut value = self.value()?;
            // `Values=a,b,c`: further segments that are not `key=` belong to this key.
            if value.is_string() {
                let mut list = vec![value];
                while self.peek() == Some(',') && !self.next_is_key() {
                    self.pos += 1;
                    list.push(self.value()?);
                }
                value = if list.len() == 1 {
                    list.remove(0)
                } else {
                    Value::Array(list)
                };
            }
            map.insert(key, value);
            self.skip_spaces();
            match self.peek() {
                Some(',') => self.pos += 1,
                c if c == closing || c.is_none() => return Ok(map),
                Some(c) => return Err(format!("unexpected '{c}' at position {}", self.pos)),
                None => return Ok(map),
            }
        }
    }

    /// Whether the segment after the comma at `pos` starts with `key=`.
    fn next_is_key(&self) -> bool {
        for &c in &self.chars[self.pos + 1..] {
            match c {
                '=' => return true,
                ',' | '{' | '}' | '[' | ']' | '"' | '\'' => return false,
                _ => {}
            }
        }
        false
    }

    /// A nested structure, a list, a quoted string, or a bare value (which ends at
    /// ',', '}' or ']').
    fn value(&mut self) -> Result<Value, String> {
        self.skip_spaces();
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                let map = self.structure(Some('}'))?;
                self.expect('}')?;
                Ok(Value::Object(map))
            }
            Some('[') => {
                self.pos += 1;
                let mut list = Vec::new();
                loop {
                    self.skip_spaces();
                    if self.peek() == Some(']') {
                        self.pos += 1;
                        return Ok(Value::Array(list));
                    }
                    list.push(self.value()?);
                    self.skip_spaces();
                    match self.peek() {
                        Some(',') => self.pos += 1,
                        Some(']') => {}
                        Some(c) => {
                            return Err(format!(
                                "unexpected '{c}' in a list at position {}",
                                self.pos
                            ))
                        }
                        None => return Err("Expected: ']', received: end of input".into()),
                    }
                }
            }
            Some(quote @ ('"' | '\'')) => {
                self.pos += 1;
                let mut text = String::new();
                loop {
                    match self.peek() {
                        None => return Err(format!("unterminated {quote}-quoted value")),
                        Some('\\') if self.chars.get(self.pos + 1).is_some() => {
                            text.push(self.chars[self.pos + 1]);
                            self.pos += 2;
                        }
                        Some(c) if c == quote => {
                            self.pos += 1;
                            return Ok(Value::String(text));
                        }
                        Some(c) => {
                            text.push(c);
                            self.pos += 1;
                        }
                    }
                }
            }
            _ => {
                let mut text = String::new();
                while let Some(c) = self.peek() {
                    if matches!(c, ',' | '}' | ']') {
                        break;
                    }
                    if c == '\\' && self.chars.get(self.pos + 1).is_some() {
                        text.push(self.chars[self.pos + 1]);
                        self.pos += 2;
                        continue;
                    }
                    text.push(c);
                    self.pos += 1;
                }
                Ok(Value::String(text.trim().to_string()))
            }
        }
    }
}

/// Deserialisers that accept a number or boolean as JSON or as the shorthand's string.
pub mod lenient {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Loose {
        Bool(bool),
        Number(u64),
        Text(String),
    }

    fn to_u64<E: serde::de::Error>(loose: Loose) -> Result<u64, E> {
        match loose {
            Loose::Number(number) => Ok(number),
            Loose::Text(text) => text
                .trim()
                .parse()
                .map_err(|_| E::custom(format!("invalid integer value '{text}'"))),
            Loose::Bool(flag) => Err(E::custom(format!("invalid integer value '{flag}'"))),
        }
    }

    pub fn opt_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
        Option::<Loose>::deserialize(deserializer)?
            .map(to_u64)
            .transpose()
    }

    pub fn opt_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
        opt_u64(deserializer)?
            .map(|value| {
                u32::try_from(value).map_err(|_| D::Error::custom(format!("{value} is too large")))
            })
            .transpose()
    }

    pub fn opt_bool<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<bool>, D::Error> {
        match Option::<Loose>::deserialize(deserializer)? {
            None => Ok(None),
            Some(Loose::Bool(flag)) => Ok(Some(flag)),
            Some(Loose::Text(text)) => match text.to_ascii_lowercase().as_str() {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(D::Error::custom(format!("invalid boolean value '{text}'"))),
            },
            Some(Loose::Number(number)) => Err(D::Error::custom(format!(
                "invalid boolean value '{number}'"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Value {
        parse_argument("--test", text).unwrap()
    }

    #[test]
    fn flat_and_nested_shorthand() {
        assert_eq!(
            parse("HttpTokens=required,HttpPutResponseHopLimit=2"),
            json!({"HttpTokens": "required", "HttpPutResponseHopLimit": "2"})
        );
        assert_eq!(
            parse(
                "DeviceName=/dev/xvda,Ebs={VolumeSize=8,VolumeType=gp3,DeleteOnTermination=false}"
            ),
            json!({"DeviceName": "/dev/xvda",
                   "Ebs": {"VolumeSize": "8", "VolumeType": "gp3", "DeleteOnTermination": "false"}})
        );
        assert_eq!(
            parse("DeviceName=/dev/sdb,NoDevice="),
            json!({"DeviceName": "/dev/sdb", "NoDevice": ""})
        );
        assert_eq!(
            parse("AvailabilityZone=us-east-1a"),
            json!({"AvailabilityZone": "us-east-1a"})
        );
    }

    #[test]
    fn lists_in_brackets_and_by_continuation() {
        assert_eq!(
            parse("Name=instance-type,Values=t3.micro,t3.small"),
            json!({"Name": "instance-type", "Values": ["t3.micro", "t3.small"]})
        );
        assert_eq!(
            parse("Name=tag:env,Values=[prod,dev]"),
            json!({"Name": "tag:env", "Values": ["prod", "dev"]})
        );
        assert_eq!(
            parse("DeviceIndex=0,Groups=[sg-1,sg-2],SubnetId=subnet-1"),
            json!({"DeviceIndex": "0", "Groups": ["sg-1", "sg-2"], "SubnetId": "subnet-1"})
        );
        assert_eq!(
            parse("Add=[{Group=all},{UserId=123456789012}]"),
            json!({"Add": [{"Group": "all"}, {"UserId": "123456789012"}]})
        );
    }

    #[test]
    fn quotes_escapes_and_json() {
        assert_eq!(
            parse(r#"Description="a, b",Name='x=y'"#),
            json!({"Description": "a, b", "Name": "x=y"})
        );
        assert_eq!(parse(r"Description=a\,b"), json!({"Description": "a,b"}));
        assert_eq!(
            parse(r#"[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}}]"#),
            json!([{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}}])
        );
        let args = vec![
            "Name=a,Values=1".to_string(),
            r#"[{"Name":"b","Values":["2"]}]"#.to_string(),
        ];
        assert_eq!(
            parse_list_arguments("--filters", &args).unwrap(),
            vec![
                json!({"Name": "a", "Values": "1"}),
                json!({"Name": "b", "Values": ["2"]})
            ]
        );
    }

    #[test]
    fn malformed_shorthand_is_an_ec2_error() {
        for bad in [
            "HttpTokens",
            "=x",
            "Ebs={VolumeSize=8",
            "A=[1,2",
            "A=\"open",
            "{not json",
            "A=1}",
        ] {
            let error = parse_argument("--metadata-options", bad).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidParameterValue, "{bad}");
            assert!(
                error
                    .message
                    .starts_with("Error parsing parameter '--metadata-options'"),
                "{}",
                error.message
            );
        }
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "PascalCase", deny_unknown_fields)]
    struct Sample {
        #[serde(default, deserialize_with = "lenient::opt_u32")]
        size: Option<u32>,
        #[serde(default, deserialize_with = "lenient::opt_bool")]
        flag: Option<bool>,
    }

    #[test]
    fn lenient_numbers_and_booleans() {
        let from_shorthand: Sample = from_json(parse("Size=8,Flag=true")).unwrap();
        let from_json_value: Sample = from_json(json!({"Size": 8, "Flag": true})).unwrap();
        assert_eq!(from_shorthand, from_json_value);
        assert_eq!(
            from_json::<Sample>(json!({})).unwrap(),
            Sample {
                size: None,
                flag: None
            }
        );
        assert_eq!(
            from_json::<Sample>(parse("Size=x")).unwrap_err().code,
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            from_json::<Sample>(parse("Flag=yes")).unwrap_err().code,
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            from_json::<Sample>(parse("Size=99999999999"))
                .unwrap_err()
                .code,
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            from_json::<Sample>(parse("Colour=red")).unwrap_err().code,
            ErrorCode::InvalidParameter
        );
    }
}
