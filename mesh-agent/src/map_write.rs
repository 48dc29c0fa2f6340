//! One rule for every writer of a pinned map: a retried write converges.
//!
//! Writers keep a copy of what their maps hold and write differences. An insert is
//! idempotent by itself; a removal of a key that is already gone (removed by an earlier
//! attempt that failed later, or by whoever else held the pin) has reached what it wanted,
//! so it counts as done instead of failing the same way at every retry. Any other error is
//! an error: the writer keeps the key in its copy and tries again.

use aya::maps::MapError;

/// `result` of a map removal, with "no such key" counted as removed.
pub fn converged(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(err)) if err.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_is_removed_and_other_errors_stay() {
        let syscall = |errno| {
            Err(MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_delete_elem",
                io_error: std::io::Error::from_raw_os_error(errno),
            }))
        };
        assert!(converged(Ok(())).is_ok());
        assert!(converged(Err(MapError::KeyNotFound)).is_ok());
        assert!(converged(syscall(libc::ENOENT)).is_ok());
        assert!(converged(syscall(libc::EPERM)).is_err());
        assert!(converged(syscall(libc::E2BIG)).is_err());
    }
}
