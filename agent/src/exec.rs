//! Runs one command for a task: no shell unless asked, stdout and stderr captured up to a cap (the
//! rest is read and dropped, so a chatty process never blocks), a timeout and a cancel that kill
//! the whole process group.

use std::collections::BTreeMap;
use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct Job {
    pub program: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub timeout: Duration,
    /// Keep at most this many bytes of each stream.
    pub max_output_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Exited by itself with this code (None: killed by a signal it did not get from us).
    Exited(Option<i32>),
    TimedOut,
    Canceled,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub ending: Ending,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// Reads a stream to its end, keeping the first `cap` bytes.
async fn capture(mut r: impl AsyncRead + Unpin, cap: usize) -> (Vec<u8>, bool) {
    let (mut kept, mut truncated, mut buf) = (Vec::new(), false, vec![0u8; 16 * 1024]);
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return (kept, truncated),
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        // SAFETY: killpg only sends a signal; the group id is the child's pid (process_group(0)).
        unsafe {
            libc::killpg(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

/// Runs `job` until it exits, times out, or `cancel` resolves. Err: it could not be started
/// (missing program, bad working directory).
pub async fn run(job: &Job, cancel: impl Future<Output = ()>) -> Result<Outcome, String> {
    let mut cmd = Command::new(&job.program);
    cmd.args(&job.args)
        .envs(&job.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(d) = &job.cwd {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().map_err(|e| match &job.cwd {
        Some(d) if !std::path::Path::new(d).is_dir() => {
            format!("cannot run {}: no directory {d}", job.program)
        }
        _ => format!("cannot run {}: {e}", job.program),
    })?;
    let pid = child.id();
    let cap = job.max_output_bytes;
    let out = tokio::spawn(capture(child.stdout.take().expect("piped"), cap));
    let err = tokio::spawn(capture(child.stderr.take().expect("piped"), cap));
    let ending = tokio::select! {
        status = child.wait() => Ending::Exited(status.ok().and_then(|s| s.code())),
        _ = tokio::time::sleep(job.timeout) => Ending::TimedOut,
        _ = cancel => Ending::Canceled,
    };
    // Whatever happened, nothing of the group outlives the run.
    kill_group(pid);
    let _ = child.wait().await;
    // A process that left the group may hold the pipes open: do not wait for it forever.
    let grace = Duration::from_secs(2);
    let (stdout, stdout_truncated) = tokio::time::timeout(grace, out)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    let (stderr, stderr_truncated) = tokio::time::timeout(grace, err)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    Ok(Outcome {
        ending,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout_ms: u64, cap: usize) -> Job {
        Job {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            timeout: Duration::from_millis(timeout_ms),
            max_output_bytes: cap,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn captures_output_and_exit_code() {
        let o = run(
            &sh("echo out; echo err >&2; exit 3", 5000, 1024),
            std::future::pending(),
        )
        .await
        .unwrap();
        assert_eq!(o.ending, Ending::Exited(Some(3)));
        assert_eq!(o.stdout, b"out\n");
        assert_eq!(o.stderr, b"err\n");
    }

    #[tokio::test]
    async fn output_is_capped_and_flagged() {
        let o = run(
            &sh("head -c 100000 /dev/zero", 5000, 1000),
            std::future::pending(),
        )
        .await
        .unwrap();
        assert_eq!(o.ending, Ending::Exited(Some(0)));
        assert_eq!(o.stdout.len(), 1000);
        assert!(o.stdout_truncated && !o.stderr_truncated);
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        // A grandchild that would write the marker after 2 s unless it is killed with the group.
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let o = run(&sh(&script, 300, 1024), std::future::pending())
            .await
            .unwrap();
        assert_eq!(o.ending, Ending::TimedOut);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            !marker.exists(),
            "a process of the group outlived the timeout"
        );
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error() {
        let job = Job {
            program: "/nonexistent/prog".into(),
            timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let e = run(&job, std::future::pending()).await.unwrap_err();
        assert!(e.contains("cannot run /nonexistent/prog"), "{e}");
    }
}
