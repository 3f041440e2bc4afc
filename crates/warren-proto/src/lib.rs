//! The daemon ↔ agent protocol.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of JSON.
//! Both sides open with [`Frame::Hello`] carrying [`PROTOCOL_VERSION`]; every
//! field beyond the frame's `type` is optional so that old and new peers can
//! read each other's frames. Requests carry a `stream` id chosen by the daemon;
//! the agent answers on the same id, so many commands share one connection.
//!
//! File requests (v5) each take a connection of their own, on which bulk
//! data then flows raw (see the `files` frames and [`ChunkReader`]).
//!
//! The checked-in schema snapshot (`schema/v{N}.json`) fails a test whenever a
//! frame changes without a version bump.

mod bytes_b64;
mod codec;
mod files;
mod frame;

pub use codec::{
    decode_body, decode_len, encode, read_frame, write_frame, CodecError, MAX_FRAME_LEN,
};
pub use files::{
    chunk_header, ChangeKind, ChunkReader, EntryKind, FileChange, FileEntry, FileFindRequest,
    FileGrepRequest, FileListRequest, FileMkdirRequest, FilePathRequest, FileReadRequest,
    FileRemoveRequest, FileRenameRequest, FileWatchRequest, FileWriteRequest, GrepLine,
    TarUploadRequest,
};
pub use frame::{ExecDone, ExecRequest, Frame, OutputChunk, ProcessEntry, PtySize, SpawnRequest};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 5;
