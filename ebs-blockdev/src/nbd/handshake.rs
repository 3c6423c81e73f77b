//! Server side of fixed-newstyle negotiation.

use std::io::{self, Read, Write};

use super::proto::*;
use super::{Export, ExportProvider, ExportRefusal};

/// The outcome of a successful negotiation.
pub struct Negotiated {
    pub export: Export,
    pub structured_replies: bool,
    /// Context id of `base:allocation` when the client selected it.
    pub allocation_context: Option<u32>,
}

/// Context id we hand out for base:allocation.
const ALLOCATION_CONTEXT_ID: u32 = 1;

fn read_string(data: &mut &[u8], what: &str) -> io::Result<String> {
    let length = read_u32(data)? as usize;
    if length > data.len() {
        return Err(invalid(format!(
            "{what} length {length} exceeds option data"
        )));
    }
    let (text, rest) = data.split_at(length);
    *data = rest;
    String::from_utf8(text.to_vec()).map_err(|_| invalid(format!("{what} is not UTF-8")))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn transmission_flags(export: &Export) -> u16 {
    let mut flags = TFLAG_HAS_FLAGS
        | TFLAG_SEND_FLUSH
        | TFLAG_SEND_FUA
        | TFLAG_SEND_TRIM
        | TFLAG_SEND_WRITE_ZEROES
        | TFLAG_SEND_DF
        // Every connection to a volume shares one store, and FLUSH syncs that store,
        // so a FLUSH on one connection covers writes completed on all of them.
        | TFLAG_CAN_MULTI_CONN;
    if export.read_only {
        flags |= TFLAG_READ_ONLY;
    }
    flags
}

struct State {
    structured_replies: bool,
    /// Export name the meta context was selected for, and whether base:allocation is on.
    meta_context: Option<(String, bool)>,
}

/// Runs negotiation. `Ok(None)` means the client ended it (ABORT or EOF).
pub fn negotiate<S: Read + Write>(
    stream: &mut S,
    provider: &dyn ExportProvider,
) -> io::Result<Option<Negotiated>> {
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    stream.write_all(&greeting)?;
    let client_flags = read_u32(stream)?;
    if client_flags & CLIENT_FLAG_FIXED_NEWSTYLE == 0 {
        return Err(invalid("client does not support fixed newstyle".into()));
    }
    if client_flags & !(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES) != 0 {
        return Err(invalid(format!("unknown client flags {client_flags:#x}")));
    }
    let no_zeroes = client_flags & CLIENT_FLAG_NO_ZEROES != 0;
    let mut state = State {
        structured_replies: false,
        meta_context: None,
    };
    loop {
        let magic = match read_u64(stream) {
            Ok(magic) => magic,
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(error) => return Err(error),
        };
        if magic != IHAVEOPT {
            return Err(invalid(format!("bad option magic {magic:#x}")));
        }
        let option = read_u32(stream)?;
        let length = read_u32(stream)?;
        if length > MAX_OPTION_LENGTH {
            // Too large to be any option we know; drain it and refuse.
            io::copy(&mut stream.take(u64::from(length)), &mut io::sink())?;
            write_option_reply(stream, option, REP_ERR_TOO_BIG, b"option data too large")?;
            continue;
        }
        let mut data = vec![0u8; length as usize];
        stream.read_exact(&mut data)?;
        match option {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                // EXPORT_NAME has no error reply: a refusal can only close the connection.
                let export = match provider.open_export(&name) {
                    Ok(export) => export,
                    Err(refusal) => {
                        log::info!("nbd: EXPORT_NAME refused: {refusal:?}");
                        return Ok(None);
                    }
                };
                let mut reply = Vec::with_capacity(10 + 124);
                reply.extend_from_slice(&export.store.size().to_be_bytes());
                reply.extend_from_slice(&transmission_flags(&export).to_be_bytes());
                if !no_zeroes {
                    reply.extend_from_slice(&[0u8; 124]);
                }
                stream.write_all(&reply)?;
                return Ok(Some(Negotiated {
                    export,
                    structured_replies: false,
                    allocation_context: None,
                }));
            }
            OPT_INFO | OPT_GO => {
                if let Some(export) = handle_info(stream, provider, option, &data)? {
                    if option == OPT_GO {
                        let allocation_context = match &state.meta_context {
                            Some((name, true)) if name == &export_name_of(&data) => {
                                Some(ALLOCATION_CONTEXT_ID)
                            }
                            _ => None,
                        };
                        return Ok(Some(Negotiated {
                            export,
                            structured_replies: state.structured_replies,
                            allocation_context,
                        }));
                    }
                }
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    write_option_reply(
                        stream,
                        option,
                        REP_ERR_INVALID,
                        b"STRUCTURED_REPLY takes no data",
                    )?;
                } else {
                    state.structured_replies = true;
                    write_option_reply(stream, option, REP_ACK, &[])?;
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                handle_meta_context(stream, &mut state, option, &data)?
            }
            OPT_ABORT => {
                write_option_reply(stream, option, REP_ACK, &[])?;
                return Ok(None);
            }
            OPT_LIST => {
                // Volume ids are not advertised: a consumer learns its export name from
                // AttachVolume.
                write_option_reply(
                    stream,
                    option,
                    REP_ERR_POLICY,
                    b"export listing is disabled; use the export name AttachVolume returned",
                )?;
            }
            OPT_STARTTLS => {
                write_option_reply(stream, option, REP_ERR_UNSUP, b"TLS is not supported")?
            }
            _ => write_option_reply(stream, option, REP_ERR_UNSUP, b"option not supported")?,
        }
    }
}

fn export_name_of(data: &[u8]) -> String {
    let mut cursor = data;
    read_string(&mut cursor, "export name").unwrap_or_default()
}

/// Handles NBD_OPT_INFO / NBD_OPT_GO; returns the export when it was granted.
fn handle_info<S: Write>(
    stream: &mut S,
    provider: &dyn ExportProvider,
    option: u32,
    data: &[u8],
) -> io::Result<Option<Export>> {
    let mut cursor = data;
    let parsed = (|| -> io::Result<(String, Vec<u16>)> {
        let name = read_string(&mut cursor, "export name")?;
        let count = read_u16(&mut cursor)? as usize;
        let mut requests = Vec::with_capacity(count.min(16));
        for _ in 0..count {
            requests.push(read_u16(&mut cursor)?);
        }
        if !cursor.is_empty() {
            return Err(invalid("trailing bytes after information requests".into()));
        }
        Ok((name, requests))
    })();
    let (name, _requests) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => {
            write_option_reply(
                stream,
                option,
                REP_ERR_INVALID,
                error.to_string().as_bytes(),
            )?;
            return Ok(None);
        }
    };
    let export = match provider.open_export(&name) {
        Ok(export) => export,
        Err(ExportRefusal::Unknown(message)) => {
            write_option_reply(stream, option, REP_ERR_UNKNOWN, message.as_bytes())?;
            return Ok(None);
        }
        Err(ExportRefusal::NotAuthorized(message)) => {
            write_option_reply(stream, option, REP_ERR_POLICY, message.as_bytes())?;
            return Ok(None);
        }
    };
    let mut info = Vec::with_capacity(12);
    info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    info.extend_from_slice(&export.store.size().to_be_bytes());
    info.extend_from_slice(&transmission_flags(&export).to_be_bytes());
    write_option_reply(stream, option, REP_INFO, &info)?;
    // Block sizes are sent whether or not the client asked: min 1 (any alignment works),
    // preferred 4 KiB, max the largest payload we accept.
    let mut sizes = Vec::with_capacity(14);
    sizes.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    sizes.extend_from_slice(&1u32.to_be_bytes());
    sizes.extend_from_slice(&PREFERRED_BLOCK_SIZE.to_be_bytes());
    sizes.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
    write_option_reply(stream, option, REP_INFO, &sizes)?;
    write_option_reply(stream, option, REP_ACK, &[])?;
    Ok(Some(export))
}

fn handle_meta_context<S: Write>(
    stream: &mut S,
    state: &mut State,
    option: u32,
    data: &[u8],
) -> io::Result<()> {
    if option == OPT_SET_META_CONTEXT && !state.structured_replies {
        return write_option_reply(
            stream,
            option,
            REP_ERR_INVALID,
            b"SET_META_CONTEXT needs STRUCTURED_REPLY first",
        );
    }
    let mut cursor = data;
    let parsed = (|| -> io::Result<(String, Vec<String>)> {
        let name = read_string(&mut cursor, "export name")?;
        let count = read_u32(&mut cursor)?;
        let mut queries = Vec::new();
        for _ in 0..count {
            queries.push(read_string(&mut cursor, "query")?);
        }
        if !cursor.is_empty() {
            return Err(invalid("trailing bytes after queries".into()));
        }
        Ok((name, queries))
    })();
    let (name, queries) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => {
            return write_option_reply(
                stream,
                option,
                REP_ERR_INVALID,
                error.to_string().as_bytes(),
            )
        }
    };
    let wants_allocation = if option == OPT_LIST_META_CONTEXT {
        queries.is_empty()
            || queries
                .iter()
                .any(|query| query == "base:" || query == BASE_ALLOCATION)
    } else {
        queries.iter().any(|query| query == BASE_ALLOCATION)
    };
    if wants_allocation {
        let mut reply = Vec::new();
        reply.extend_from_slice(&ALLOCATION_CONTEXT_ID.to_be_bytes());
        reply.extend_from_slice(BASE_ALLOCATION.as_bytes());
        write_option_reply(stream, option, REP_META_CONTEXT, &reply)?;
    }
    if option == OPT_SET_META_CONTEXT {
        state.meta_context = Some((name, wants_allocation));
    }
    write_option_reply(stream, option, REP_ACK, &[])
}
