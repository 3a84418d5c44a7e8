//! Placing a file on this machine so that nothing ever sees half of it: the bytes go to a
//! temporary file in the same directory, which is synced, given its mode and owner, and renamed
//! over the target; then the directory is synced, so the rename survives a crash. A process killed
//! in the middle leaves the old content or the new one (and perhaps a stray temporary file, which
//! the next placement of the same path removes).

use std::ffi::CString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

/// Where a file may be placed: an absolute path with no `.` or `..` component and no NUL.
pub fn check_path(path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!("path {path:?}: not absolute"));
    }
    if path.contains('\0') {
        return Err(format!("path {path:?}: holds a NUL"));
    }
    if path.split('/').any(|s| s == "." || s == "..")
        || p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!("path {path:?}: holds . or .."));
    }
    if p.file_name().is_none() {
        return Err(format!("path {path:?}: names no file"));
    }
    Ok(p.to_path_buf())
}

fn temp_of(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.eden-tmp"))
}

/// Writes `bytes` to `path` whole, with `mode` and, when given, `uid`/`gid`.
pub fn write_atomically(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = temp_of(path);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = (|| {
        f.write_all(bytes)?;
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::fchown(&f, uid, gid)?;
        }
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A user's id: a number, or a name looked up in the user database.
pub fn uid_of(user: &str) -> Result<u32, String> {
    if let Ok(n) = user.parse() {
        return Ok(n);
    }
    let c = CString::new(user).map_err(|_| format!("user {user:?}: holds a NUL"))?;
    // SAFETY: getpwnam returns a pointer into static storage or null; read at once.
    let p = unsafe { libc::getpwnam(c.as_ptr()) };
    if p.is_null() {
        return Err(format!("no user {user:?} on this machine"));
    }
    Ok(unsafe { (*p).pw_uid })
}

/// A group's id: a number, or a name looked up in the group database.
pub fn gid_of(group: &str) -> Result<u32, String> {
    if let Ok(n) = group.parse() {
        return Ok(n);
    }
    let c = CString::new(group).map_err(|_| format!("group {group:?}: holds a NUL"))?;
    // SAFETY: getgrnam returns a pointer into static storage or null; read at once.
    let p = unsafe { libc::getgrnam(c.as_ptr()) };
    if p.is_null() {
        return Err(format!("no group {group:?} on this machine"));
    }
    Ok(unsafe { (*p).gr_gid })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn paths_are_absolute_and_plain() {
        assert!(check_path("/etc/eden/ca.crt").is_ok());
        for bad in ["etc/x", "/etc/../x", "/etc/./x", "/", "/a\0b"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_placed_file_is_whole_with_its_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ca.crt");
        std::fs::write(temp_of(&p), b"stray").unwrap();
        write_atomically(&p, b"new", 0o600, None, None).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        assert!(!temp_of(&p).exists());
        assert_eq!(uid_of("root").unwrap(), 0);
        assert!(uid_of("no-such-user-here").is_err());
    }
}
