//! Watching one file for changes with Linux's inotify: the directory holding it is watched (a
//! file written whole is a new file renamed over the old one), and each event naming the file is
//! passed on. The watch ends when the receiver is dropped.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// A channel that receives a reason each time `path` may have changed (written, replaced,
/// removed, its mode or owner changed).
pub fn watch(path: &Path) -> Result<mpsc::Receiver<String>, String> {
    let dir = path.parent().ok_or("a path without a directory")?;
    let name = path
        .file_name()
        .ok_or("a path without a file name")?
        .to_os_string();
    let cdir = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| "a path with a NUL".to_string())?;
    // SAFETY: inotify_init1 returns a new descriptor (or -1), owned from here on.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(format!("inotify: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mask = libc::IN_CLOSE_WRITE
        | libc::IN_MOVED_TO
        | libc::IN_MOVED_FROM
        | libc::IN_CREATE
        | libc::IN_DELETE
        | libc::IN_ATTRIB
        | libc::IN_MODIFY;
    // SAFETY: fd is valid and cdir a NUL-terminated path.
    if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), cdir.as_ptr(), mask) } < 0 {
        return Err(format!(
            "watching {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the descriptor is owned by the AsyncFd from here on and closed only when it is
    // dropped (nothing else holds it).
    let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| format!("inotify: {e}"))?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let mut guard = tokio::select! {
                g = fd.readable() => match g { Ok(g) => g, Err(_) => return },
                _ = tx.closed() => return,
            };
            // SAFETY: reads into our buffer from our descriptor.
            let n = unsafe {
                libc::read(
                    fd.get_ref().as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                    continue;
                }
                return;
            }
            let mut at = 0usize;
            let header = std::mem::size_of::<libc::inotify_event>();
            let mut hit = None;
            while at + header <= n as usize {
                // SAFETY: the kernel wrote whole events; read the header unaligned.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[at..].as_ptr() as *const _) };
                let name_bytes = &buf[at + header..at + header + ev.len as usize];
                let end = name_bytes
                    .iter()
                    .position(|b| *b == 0)
                    .unwrap_or(name_bytes.len());
                if &name_bytes[..end] == name.as_encoded_bytes() {
                    hit = Some(ev.mask);
                }
                at += header + ev.len as usize;
            }
            if let Some(mask) = hit {
                let what = if mask & (libc::IN_DELETE | libc::IN_MOVED_FROM) != 0 {
                    "removed"
                } else if mask & libc::IN_ATTRIB != 0 && mask & libc::IN_MODIFY == 0 {
                    "mode or owner changed"
                } else {
                    "written"
                };
                if tx.send(what.to_string()).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_replaced_or_removed_is_seen_and_its_neighbours_are_not() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("motd");
        std::fs::write(&path, "a").unwrap();
        let mut rx = watch(&path).unwrap();
        std::fs::write(d.path().join("other"), "x").unwrap();
        std::fs::write(d.path().join(".tmp"), "b").unwrap();
        std::fs::rename(d.path().join(".tmp"), &path).unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some("written"));
        std::fs::remove_file(&path).unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some("removed"));
    }
}
