//! Linux capabilities: the default set a sandbox's root keeps.

/// CAP_CHOWN.
pub const CAP_CHOWN: u32 = 0;
/// CAP_SYS_ADMIN: never kept.
pub const CAP_SYS_ADMIN: u32 = 21;

/// runc's default set: chown, dac_override, fowner, fsetid, kill, setgid,
/// setuid, setpcap, net_bind_service, sys_chroot, mknod, audit_write,
/// setfcap. Everything else is dropped from every set, bounding included.
pub const DEFAULT_CAPABILITIES: &[u32] = &[
    0,  // chown
    1,  // dac_override
    3,  // fowner
    4,  // fsetid
    5,  // kill
    6,  // setgid
    7,  // setuid
    8,  // setpcap
    10, // net_bind_service
    18, // sys_chroot
    27, // mknod
    29, // audit_write
    31, // setfcap
];

/// The 64-bit mask of a capability list.
pub fn mask(caps: &[u32]) -> u64 {
    caps.iter()
        .filter(|c| **c < 64)
        .fold(0u64, |m, c| m | (1u64 << c))
}

#[cfg(test)]
mod tests {
    #[test]
    fn mask_sets_one_bit_per_capability() {
        assert_eq!(
            super::mask(&[0, 1, 31]),
            0b1000_0000_0000_0000_0000_0000_0000_0011
        );
        assert_eq!(super::mask(&[]), 0);
    }
}
