//! The thin syscall layer. Each real method is one kernel call deep (or a
//! fixed, tiny sequence); [`RecordingSyscalls`] logs calls for order tests.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Every kernel call the setup executor makes.
pub trait Syscalls {
    /// mount(2).
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// chdir(new_root); pivot_root(".", "."); umount2(".", MNT_DETACH); chdir("/").
    fn pivot_root(&mut self, new_root: &Path) -> io::Result<()>;
    /// mkdir -p.
    fn mkdir_all(&mut self, path: &Path) -> io::Result<()>;
    /// Creates an empty file if nothing is there.
    fn create_file(&mut self, path: &Path) -> io::Result<()>;
    /// symlink(2).
    fn symlink(&mut self, original: &Path, link: &Path) -> io::Result<()>;
    /// lstat: `Some(is_dir)` when the path exists.
    fn probe(&mut self, path: &Path) -> Option<bool>;
    /// lstat: whether the path is a symlink.
    fn is_symlink(&mut self, path: &Path) -> bool;
    /// unlink(2).
    fn remove_file(&mut self, path: &Path) -> io::Result<()>;
    /// statvfs(2) `f_flag` of the filesystem holding `path`.
    fn mount_flags(&mut self, path: &Path) -> io::Result<u64>;
    /// sethostname(2).
    fn sethostname(&mut self, name: &str) -> io::Result<()>;
    /// Sets IFF_UP on `lo` in the current network namespace and disables
    /// IPv6 on interfaces created in it later (`conf/default`).
    fn loopback_up(&mut self) -> io::Result<()>;
    /// Marks fds above 2 close-on-exec, except `keep`.
    fn cloexec_fds_except(&mut self, keep: &[i32]) -> io::Result<()>;
    /// prctl(PR_SET_NO_NEW_PRIVS).
    fn set_no_new_privs(&mut self) -> io::Result<()>;
    /// Drops all capabilities not in `keep_mask` from every set.
    fn drop_capabilities(&mut self, keep_mask: u64) -> io::Result<()>;
    /// setrlimit(2) with soft = hard = min(`limit`, current hard limit).
    fn set_rlimit(&mut self, resource: u32, limit: u64) -> io::Result<()>;
    /// prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER) with this program.
    fn install_seccomp(&mut self, program: &[crate::seccomp::BpfInstruction]) -> io::Result<()>;
}

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The real kernel.
#[derive(Debug, Default)]
pub struct LinuxSyscalls;

impl Syscalls for LinuxSyscalls {
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> io::Result<()> {
        let source = source.map(cstr).transpose()?;
        let target = cstr(target)?;
        let fstype = fstype
            .map(CString::new)
            .transpose()
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let data = data
            .map(CString::new)
            .transpose()
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: every pointer is either null or a valid NUL-terminated string
        // that outlives the call.
        check(unsafe {
            libc::mount(
                source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                target.as_ptr(),
                fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                flags as libc::c_ulong,
                data.as_ref()
                    .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
            )
        })
    }

    fn pivot_root(&mut self, new_root: &Path) -> io::Result<()> {
        std::env::set_current_dir(new_root)?;
        let dot = c".";
        // SAFETY: pivot_root has no libc wrapper; both arguments are valid C strings.
        let ret = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
        check(ret as libc::c_int)?;
        // SAFETY: valid C string; detaches the old root now stacked on ".".
        check(unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) })?;
        std::env::set_current_dir("/")
    }

    fn mkdir_all(&mut self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn create_file(&mut self, path: &Path) -> io::Result<()> {
        if std::fs::symlink_metadata(path).is_ok() {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map(drop)
    }

    fn symlink(&mut self, original: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(original, link)
    }

    fn probe(&mut self, path: &Path) -> Option<bool> {
        std::fs::symlink_metadata(path).ok().map(|m| m.is_dir())
    }

    fn is_symlink(&mut self, path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
    }

    fn remove_file(&mut self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn mount_flags(&mut self, path: &Path) -> io::Result<u64> {
        let c = cstr(path)?;
        // SAFETY: statvfs is plain old data; zeroed is a valid initial value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid path and a pointer to a live statvfs.
        check(unsafe { libc::statvfs(c.as_ptr(), &mut st) })?;
        Ok(st.f_flag)
    }

    fn sethostname(&mut self, name: &str) -> io::Result<()> {
        // SAFETY: pointer and length describe the bytes of `name`.
        check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
    }

    fn loopback_up(&mut self) -> io::Result<()> {
        // SAFETY: a plain socket(2) call; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned only here.
        let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS fills the flags of the named interface in `req`.
        check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
        // SAFETY: SIOCGIFFLAGS wrote the `ifru_flags` member of the union.
        unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        // SAFETY: SIOCSIFFLAGS reads the name and flags from `req`.
        check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })?;
        // Per network namespace (this process's); absent without IPv6.
        match std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", b"1") {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn cloexec_fds_except(&mut self, keep: &[i32]) -> io::Result<()> {
        let mut start: u32 = 3;
        let mut sorted: Vec<u32> = keep
            .iter()
            .filter(|fd| **fd >= 3)
            .map(|fd| *fd as u32)
            .collect();
        sorted.sort_unstable();
        for fd in sorted.into_iter().chain(std::iter::once(u32::MAX)) {
            if fd > start {
                // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes fd flags.
                check(unsafe {
                    libc::syscall(
                        libc::SYS_close_range,
                        start,
                        fd - 1,
                        libc::CLOSE_RANGE_CLOEXEC,
                    )
                } as libc::c_int)?;
            }
            start = fd.saturating_add(1);
        }
        Ok(())
    }

    fn set_no_new_privs(&mut self) -> io::Result<()> {
        // SAFETY: prctl with integer arguments only.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
    }

    fn drop_capabilities(&mut self, keep_mask: u64) -> io::Result<()> {
        for cap in 0..64u32 {
            if keep_mask & (1u64 << cap) != 0 {
                continue;
            }
            // SAFETY: prctl with integer arguments only.
            let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if ret < 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EINVAL) {
                    break; // past the kernel's last capability
                }
                return Err(err);
            }
        }
        // SAFETY: prctl with integer arguments only.
        check(unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        })?;
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let lo = keep_mask as u32;
        let hi = (keep_mask >> 32) as u32;
        let mut header = Header {
            version: 0x2008_0522,
            pid: 0,
        }; // _LINUX_CAPABILITY_VERSION_3
        let data = [
            Data {
                effective: lo,
                permitted: lo,
                inheritable: lo,
            },
            Data {
                effective: hi,
                permitted: hi,
                inheritable: hi,
            },
        ];
        // SAFETY: capset takes a v3 header and two data words, both live for the call.
        let ret =
            unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
        check(ret as libc::c_int)
    }

    fn set_rlimit(&mut self, resource: u32, limit: u64) -> io::Result<()> {
        let value = limit.min(Self::current_hard_limit(resource)?);
        let lim = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads a live rlimit struct.
        check(unsafe { libc::setrlimit(resource, &lim) })
    }

    fn install_seccomp(&mut self, program: &[crate::seccomp::BpfInstruction]) -> io::Result<()> {
        #[repr(C)]
        struct SockFprog {
            len: u16,
            filter: *const crate::seccomp::BpfInstruction,
        }
        let len = u16::try_from(program.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let prog = SockFprog {
            len,
            filter: program.as_ptr(),
        };
        // SAFETY: prog points at `program`, a live array of sock_filter-layout
        // instructions, for the duration of the call.
        check(unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const SockFprog,
                0,
                0,
            )
        })
    }
}

impl LinuxSyscalls {
    fn current_hard_limit(resource: u32) -> io::Result<u64> {
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into a live rlimit struct.
        check(unsafe { libc::getrlimit(resource, &mut current) })?;
        Ok(current.rlim_max)
    }
}

/// Records every call instead of making it; for order tests.
#[derive(Debug, Default)]
pub struct RecordingSyscalls {
    /// One line per call, e.g. `mount overlay -> /r`.
    pub calls: Vec<String>,
    /// Paths `probe` reports as existing directories.
    pub existing_dirs: Vec<std::path::PathBuf>,
}

impl Syscalls for RecordingSyscalls {
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.calls.push(format!(
            "mount {} -> {} type={} flags={flags:#x} data={}",
            source.map_or("none".into(), |s| s.display().to_string()),
            target.display(),
            fstype.unwrap_or("-"),
            data.unwrap_or("-")
        ));
        Ok(())
    }
    fn pivot_root(&mut self, new_root: &Path) -> io::Result<()> {
        self.calls
            .push(format!("pivot_root {}", new_root.display()));
        Ok(())
    }
    fn mkdir_all(&mut self, path: &Path) -> io::Result<()> {
        self.calls.push(format!("mkdir {}", path.display()));
        Ok(())
    }
    fn create_file(&mut self, path: &Path) -> io::Result<()> {
        self.calls.push(format!("touch {}", path.display()));
        Ok(())
    }
    fn symlink(&mut self, original: &Path, link: &Path) -> io::Result<()> {
        self.calls.push(format!(
            "symlink {} -> {}",
            link.display(),
            original.display()
        ));
        Ok(())
    }
    fn probe(&mut self, path: &Path) -> Option<bool> {
        Some(self.existing_dirs.iter().any(|d| d == path))
    }
    fn is_symlink(&mut self, _path: &Path) -> bool {
        false
    }
    fn remove_file(&mut self, path: &Path) -> io::Result<()> {
        self.calls.push(format!("unlink {}", path.display()));
        Ok(())
    }
    fn mount_flags(&mut self, _path: &Path) -> io::Result<u64> {
        Ok(0)
    }
    fn sethostname(&mut self, name: &str) -> io::Result<()> {
        self.calls.push(format!("sethostname {name}"));
        Ok(())
    }
    fn loopback_up(&mut self) -> io::Result<()> {
        self.calls.push("loopback up".into());
        Ok(())
    }
    fn cloexec_fds_except(&mut self, keep: &[i32]) -> io::Result<()> {
        self.calls.push(format!("cloexec except {keep:?}"));
        Ok(())
    }
    fn set_no_new_privs(&mut self) -> io::Result<()> {
        self.calls.push("no_new_privs".into());
        Ok(())
    }
    fn drop_capabilities(&mut self, keep_mask: u64) -> io::Result<()> {
        self.calls.push(format!("drop_caps keep={keep_mask:#x}"));
        Ok(())
    }
    fn set_rlimit(&mut self, resource: u32, limit: u64) -> io::Result<()> {
        self.calls.push(format!("rlimit {resource}={limit}"));
        Ok(())
    }
    fn install_seccomp(&mut self, program: &[crate::seccomp::BpfInstruction]) -> io::Result<()> {
        self.calls
            .push(format!("seccomp {} instructions", program.len()));
        Ok(())
    }
}
