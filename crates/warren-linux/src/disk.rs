//! Per-sandbox disks: a sparse ext4 image, attached to a loop device and
//! mounted on the host, holding the sandbox's overlay upper layer. Its size
//! is the sandbox's `diskMb`: writes beyond it fail with ENOSPC inside the
//! sandbox and can never fill the host's disk. (This kernel has no quota
//! support, so project quotas on a shared filesystem are not an option.)

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Creates a sparse image of `size_mb` MiB formatted as ext4 without a
/// journal or reserved blocks (the sandbox gets every byte it asked for).
pub fn create_image(path: &Path, size_mb: u64) -> io::Result<()> {
    let file = File::create(path)?;
    file.set_len(size_mb.saturating_mul(1024 * 1024))?;
    drop(file);
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-O",
            "^has_journal",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
        ])
        .arg(path)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("run mkfs.ext4 (install e2fsprogs): {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Attaches `image` to a free loop device (auto-cleared when unmounted) and
/// mounts it at `target` with nosuid and nodev.
pub fn mount_image(image: &Path, target: &Path) -> io::Result<()> {
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    let backing = OpenOptions::new().read(true).write(true).open(image)?;
    // Another process may take the device between GET_FREE and CONFIGURE
    // (EBUSY): ask again.
    for _ in 0..16 {
        // SAFETY: ioctl on the loop control device with no argument.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let device = format!("/dev/loop{n}");
        let Ok(dev) = OpenOptions::new().read(true).write(true).open(&device) else {
            continue;
        };
        // SAFETY: an all-zero loop_config is valid; fields are set below.
        let mut config: LoopConfig = unsafe { std::mem::zeroed() };
        config.fd = backing.as_raw_fd() as u32;
        config.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        // SAFETY: LOOP_CONFIGURE reads a live loop_config.
        if unsafe {
            libc::ioctl(
                dev.as_raw_fd(),
                LOOP_CONFIGURE,
                &config as *const LoopConfig,
            )
        } < 0
        {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EBUSY) {
                continue;
            }
            return Err(err);
        }
        let source = cstr(Path::new(&device))?;
        let target_c = cstr(target)?;
        let fstype = c"ext4";
        // SAFETY: valid C strings that outlive the call. The loop device
        // stays attached while mounted; autoclear detaches it afterwards.
        let ret = unsafe {
            libc::mount(
                source.as_ptr(),
                target_c.as_ptr(),
                fstype.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                std::ptr::null(),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(());
    }
    Err(io::Error::other("no free loop device"))
}

/// True when `path` is a mount point (its device differs from its parent's).
pub fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Some(Ok(parent))) = (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) else {
        return false;
    };
    me.dev() != parent.dev()
}

/// Unmounts a sandbox disk (lazily if something still holds it); the loop
/// device detaches itself.
pub fn unmount(target: &Path) -> io::Result<()> {
    if !is_mount_point(target) {
        return Ok(());
    }
    let c = cstr(target)?;
    // SAFETY: valid C string.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    // SAFETY: valid C string.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
