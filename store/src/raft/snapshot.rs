//! Snapshots on disk, streamed: a snapshot is written record by record into its file and read
//! back record by record, so building, sending, receiving and installing one never holds the whole
//! store in memory (before, a snapshot of a store of N bytes held about 3N while it was built).
//!
//! `snapshot.bin` in the data dir holds the latest snapshot:
//!
//! ```text
//! meta length (u64 BE) | meta (bincode SnapshotMeta) | body
//! body = bincode of { format: u32, records: Vec<(String cf, ByteBuf key, ByteBuf value)> }
//! ```
//!
//! The body's bytes are the same as before snapshots were streamed (one bincode value), so a
//! snapshot or backup written by an older eden still reads. openraft sees only the body, through
//! [`SnapshotFile`], which hides the header.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde_bytes::ByteBuf;
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use super::SnapshotMeta;

/// The body's format tag.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// A snapshot's body in a file, as openraft reads (to send it) and writes (to receive it): the
/// file's first `start` bytes (the header of `snapshot.bin`) are hidden.
pub struct SnapshotFile {
    file: tokio::fs::File,
    start: u64,
}

impl SnapshotFile {
    /// The body of the snapshot file at `path` (its header skipped).
    pub async fn open_body(path: &Path) -> io::Result<SnapshotFile> {
        let mut f = std::fs::File::open(path)?;
        let start = read_header(&mut f)?.1;
        let mut file = tokio::fs::File::from_std(f);
        tokio::io::AsyncSeekExt::seek(&mut file, SeekFrom::Start(start)).await?;
        Ok(SnapshotFile { file, start })
    }

    /// A new, empty file to receive a snapshot's body into.
    pub async fn create(path: &Path) -> io::Result<SnapshotFile> {
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .await?;
        Ok(SnapshotFile { file, start: 0 })
    }

    /// Writes out what was received (to disk); gives the file back with where its body starts
    /// (0 for a file received, past the header for `snapshot.bin`).
    pub async fn finish(mut self) -> io::Result<(std::fs::File, u64)> {
        use tokio::io::AsyncWriteExt;
        self.file.flush().await?;
        self.file.sync_all().await?;
        Ok((self.file.into_std().await, self.start))
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, pos: SeekFrom) -> io::Result<()> {
        let pos = match pos {
            SeekFrom::Start(n) => SeekFrom::Start(n + self.start),
            other => other,
        };
        Pin::new(&mut self.file).start_seek(pos)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let start = self.start;
        Pin::new(&mut self.file)
            .poll_complete(cx)
            .map_ok(|p| p.saturating_sub(start))
    }
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Writes the header of `snapshot.bin`.
pub fn write_header(w: &mut impl Write, meta: &SnapshotMeta) -> io::Result<()> {
    let raw = bincode::serialize(meta).map_err(invalid)?;
    w.write_all(&(raw.len() as u64).to_be_bytes())?;
    w.write_all(&raw)
}

/// Reads the header of `snapshot.bin`; returns the meta and where the body starts.
pub fn read_header(r: &mut impl Read) -> io::Result<(SnapshotMeta, u64)> {
    let mut len = [0u8; 8];
    r.read_exact(&mut len)
        .map_err(|_| invalid("corrupt snapshot.bin"))?;
    let n = u64::from_be_bytes(len);
    if n > 1 << 30 {
        return Err(invalid("corrupt snapshot.bin"));
    }
    let mut raw = vec![0u8; n as usize];
    r.read_exact(&mut raw)
        .map_err(|_| invalid("corrupt snapshot.bin"))?;
    let meta = bincode::deserialize(&raw).map_err(|_| invalid("corrupt snapshot.bin"))?;
    Ok((meta, 8 + n))
}

/// Writes a body record by record: [`BodyWriter::record`] for each, then [`BodyWriter::finish`]
/// (which goes back to fill in the count).
pub struct BodyWriter<W: Write + Seek> {
    w: W,
    count_at: u64,
    count: u64,
}

impl<W: Write + Seek> BodyWriter<W> {
    pub fn new(mut w: W) -> io::Result<Self> {
        w.write_all(&SNAPSHOT_FORMAT.to_le_bytes())?;
        let count_at = w.stream_position()?;
        w.write_all(&0u64.to_le_bytes())?;
        Ok(BodyWriter {
            w,
            count_at,
            count: 0,
        })
    }

    pub fn record(&mut self, cf: &str, key: &[u8], value: &[u8]) -> io::Result<()> {
        // bincode's layout of (String, ByteBuf, ByteBuf): each a u64 LE length and its bytes.
        for part in [cf.as_bytes(), key, value] {
            self.w.write_all(&(part.len() as u64).to_le_bytes())?;
            self.w.write_all(part)?;
        }
        self.count += 1;
        Ok(())
    }

    /// Fills in the count; returns the writer, positioned at the body's end.
    pub fn finish(mut self) -> io::Result<W> {
        let end = self.w.stream_position()?;
        self.w.seek(SeekFrom::Start(self.count_at))?;
        self.w.write_all(&self.count.to_le_bytes())?;
        self.w.seek(SeekFrom::Start(end))?;
        Ok(self.w)
    }
}

/// Reads a body record by record, handing each to `each`.
pub fn read_body(
    r: &mut impl Read,
    mut each: impl FnMut(&str, &[u8], &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let format: u32 = bincode::deserialize_from(&mut *r).map_err(invalid)?;
    if format != SNAPSHOT_FORMAT {
        return Err(invalid(format!("unknown snapshot format {format}")));
    }
    let count: u64 = bincode::deserialize_from(&mut *r).map_err(invalid)?;
    for _ in 0..count {
        let (cf, k, v): (String, ByteBuf, ByteBuf) =
            bincode::deserialize_from(&mut *r).map_err(invalid)?;
        each(&cf, &k, &v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize)]
    struct Body {
        format: u32,
        records: Vec<(String, ByteBuf, ByteBuf)>,
    }

    #[test]
    fn a_streamed_body_has_the_bytes_of_one_bincode_value() {
        let records = vec![
            (
                "kv".to_string(),
                ByteBuf::from(b"a".to_vec()),
                ByteBuf::from(b"1".to_vec()),
            ),
            (
                "meta".to_string(),
                ByteBuf::from(vec![0, 255]),
                ByteBuf::from(Vec::new()),
            ),
        ];
        let mut w = BodyWriter::new(io::Cursor::new(Vec::new())).unwrap();
        for (cf, k, v) in &records {
            w.record(cf, k, v).unwrap();
        }
        let streamed = w.finish().unwrap().into_inner();
        let whole = bincode::serialize(&Body {
            format: SNAPSHOT_FORMAT,
            records: records.clone(),
        })
        .unwrap();
        assert_eq!(streamed, whole);
        let mut back = Vec::new();
        read_body(&mut streamed.as_slice(), |cf, k, v| {
            back.push((cf.to_string(), ByteBuf::from(k), ByteBuf::from(v)));
            Ok(())
        })
        .unwrap();
        assert_eq!(back, records);
    }

    #[tokio::test]
    async fn openraft_sees_only_the_body_of_snapshot_bin() {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.bin");
        let meta = SnapshotMeta::default();
        let mut f = std::fs::File::create(&path).unwrap();
        write_header(&mut f, &meta).unwrap();
        f.write_all(b"the body").unwrap();
        drop(f);
        let mut s = SnapshotFile::open_body(&path).await.unwrap();
        assert_eq!(s.seek(SeekFrom::End(0)).await.unwrap(), 8);
        s.seek(SeekFrom::Start(4)).await.unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "body");
    }
}
