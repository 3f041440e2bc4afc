use std::io::{Read, Write};

use crate::Frame;

/// Largest frame accepted, so a corrupt length cannot make a peer allocate
/// gigabytes.
pub const MAX_FRAME_LEN: usize = 256 * 1024 * 1024;

/// Encoding or decoding a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The length prefix is larger than [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    /// The body is not a frame.
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Reading or writing the channel failed.
    #[error("channel i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Serializes a frame with its 4-byte big-endian length prefix.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, CodecError> {
    let body = serde_json::to_vec(frame)?;
    if body.len() > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge(body.len()));
    }
    let len = u32::try_from(body.len()).map_err(|_| CodecError::TooLarge(body.len()))?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads the body length from a 4-byte prefix, checking the limit.
pub fn decode_len(prefix: [u8; 4]) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge(len));
    }
    Ok(len)
}

/// Parses a frame body (without its prefix).
pub fn decode_body(body: &[u8]) -> Result<Frame, CodecError> {
    Ok(serde_json::from_slice(body)?)
}

/// Writes one frame to a blocking writer.
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> Result<(), CodecError> {
    w.write_all(&encode(frame)?)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame from a blocking reader; `Ok(None)` on a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, CodecError> {
    let mut prefix = [0u8; 4];
    match r.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = decode_len(prefix)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    decode_body(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExecDone, ExecRequest};

    #[test]
    fn frames_round_trip_through_a_byte_stream() {
        let frames = vec![
            Frame::Hello {
                version: 1,
                software: Some("t".into()),
            },
            Frame::Exec(ExecRequest {
                stream: 7,
                argv: vec!["echo".into(), "hi".into()],
                stdin: vec![0, 255, 10],
                timeout_ms: Some(5),
                ..Default::default()
            }),
            Frame::ExecDone(ExecDone {
                stream: 7,
                exit_code: 3,
                stdout: b"\xffok".to_vec(),
                ..Default::default()
            }),
        ];
        let mut buf = Vec::new();
        for f in &frames {
            write_frame(&mut buf, f).unwrap();
        }
        let mut r = &buf[..];
        for f in &frames {
            assert_eq!(read_frame(&mut r).unwrap().as_ref(), Some(f));
        }
        assert!(read_frame(&mut r).unwrap().is_none());
    }

    #[test]
    fn oversized_length_is_rejected_before_allocating() {
        let prefix = u32::MAX.to_be_bytes();
        assert!(matches!(decode_len(prefix), Err(CodecError::TooLarge(_))));
    }

    #[test]
    fn unknown_fields_and_missing_fields_are_tolerated() {
        let f = decode_body(br#"{"type":"exec","argv":["ls"],"future_field":1}"#).unwrap();
        assert_eq!(
            f,
            Frame::Exec(ExecRequest {
                argv: vec!["ls".into()],
                ..Default::default()
            })
        );
        assert!(decode_body(br#"{"type":"launch_rockets"}"#).is_err());
        assert!(decode_body(b"not json").is_err());
    }

    #[test]
    fn process_frames_round_trip_and_default_missing_fields() {
        let frames = [
            Frame::Output(crate::OutputChunk {
                stream: 3,
                pid: 9,
                fd: 1,
                offset: 42,
                data: vec![0, 255, b'\n'],
            }),
            Frame::Stdin {
                stream: 4,
                pid: 9,
                data: Vec::new(),
                close: true,
            },
            Frame::ProcessOutputRequest {
                stream: 5,
                pid: 9,
                from: 0,
                no_follow: false,
            },
        ];
        for f in frames {
            let bytes = encode(&f).unwrap();
            assert_eq!(read_frame(&mut &bytes[..]).unwrap(), Some(f));
        }
        assert_eq!(
            decode_body(br#"{"type":"signal","pid":3}"#).unwrap(),
            Frame::Signal {
                stream: 0,
                pid: 3,
                signal: 0
            }
        );
    }

    #[test]
    fn truncated_frame_is_an_error_not_a_clean_end() {
        let mut bytes = encode(&Frame::Ping { stream: 1 }).unwrap();
        bytes.truncate(bytes.len() - 1);
        assert!(read_frame(&mut &bytes[..]).is_err());
    }
}
