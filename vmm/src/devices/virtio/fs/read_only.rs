//! What a read-only share lets through: the FUSE requests that only read, and OPEN and
//! ACCESS when they ask for no write. Everything else, including operations this list does
//! not know yet, is answered EROFS before the FUSE server sees it.

use std::io::Read;

use fuse_backend_rs::abi::fuse_abi::{AccessIn, Opcode, OpenIn};
use vm_memory::ByteValued;

/// Whether a request with `opcode`, whose body (after the FUSE header) `body` reads, would
/// change the share. A body too short to tell counts as a change.
pub fn changes_share(opcode: u32, body: &mut impl Read) -> bool {
    const READS: &[Opcode] = &[
        Opcode::Lookup,
        Opcode::Forget,
        Opcode::Getattr,
        Opcode::Readlink,
        Opcode::Read,
        Opcode::Statfs,
        Opcode::Release,
        Opcode::Fsync,
        Opcode::Getxattr,
        Opcode::Listxattr,
        Opcode::Flush,
        Opcode::Init,
        Opcode::Opendir,
        Opcode::Readdir,
        Opcode::Releasedir,
        Opcode::Fsyncdir,
        // Advisory locks live in the server, not in the files.
        Opcode::Getlk,
        Opcode::Setlk,
        Opcode::Setlkw,
        Opcode::Interrupt,
        Opcode::Bmap,
        Opcode::Destroy,
        Opcode::Poll,
        Opcode::NotifyReply,
        Opcode::BatchForget,
        Opcode::Readdirplus,
        Opcode::Lseek,
    ];
    if READS.iter().any(|&op| op as u32 == opcode) {
        return false;
    }
    if opcode == Opcode::Open as u32 {
        return match read_body::<OpenIn>(body) {
            Some(open) => {
                let flags = open.flags as i32;
                flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
            }
            None => true,
        };
    }
    if opcode == Opcode::Access as u32 {
        return read_body::<AccessIn>(body).is_none_or(|a| a.mask & libc::W_OK as u32 != 0);
    }
    true
}

fn read_body<T: ByteValued + Default>(body: &mut impl Read) -> Option<T> {
    let mut value = T::default();
    body.read_exact(value.as_mut_slice()).ok()?;
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(flags: i32) -> bool {
        let body = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        changes_share(Opcode::Open as u32, &mut body.as_slice())
    }

    #[test]
    fn reads_pass_and_changes_are_refused() {
        for op in [
            Opcode::Lookup,
            Opcode::Read,
            Opcode::Readdirplus,
            Opcode::Init,
        ] {
            assert!(!changes_share(op as u32, &mut &[][..]), "{op:?}");
        }
        for op in [
            Opcode::Write,
            Opcode::Create,
            Opcode::Mkdir,
            Opcode::Mknod,
            Opcode::Unlink,
            Opcode::Rmdir,
            Opcode::Rename,
            Opcode::Rename2,
            Opcode::Link,
            Opcode::Symlink,
            Opcode::Setattr,
            Opcode::Setxattr,
            Opcode::Removexattr,
            Opcode::Fallocate,
            Opcode::CopyFileRange,
            Opcode::Ioctl,
            Opcode::SetupMapping,
        ] {
            assert!(changes_share(op as u32, &mut &[][..]), "{op:?}");
        }
        assert!(
            changes_share(7, &mut &[][..]),
            "unknown opcodes are refused"
        );
        assert!(changes_share(1000, &mut &[][..]));
    }

    #[test]
    fn open_and_access_are_refused_only_for_writing() {
        assert!(!open(libc::O_RDONLY));
        assert!(!open(libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_DIRECTORY));
        assert!(open(libc::O_WRONLY));
        assert!(open(libc::O_RDWR));
        assert!(open(libc::O_RDONLY | libc::O_TRUNC));
        assert!(
            changes_share(Opcode::Open as u32, &mut &[0u8; 4][..]),
            "short body"
        );
        let access = |mask: i32| {
            let body = AccessIn {
                mask: mask as u32,
                padding: 0,
            };
            changes_share(Opcode::Access as u32, &mut body.as_slice())
        };
        assert!(!access(libc::R_OK | libc::X_OK));
        assert!(access(libc::W_OK));
    }
}
