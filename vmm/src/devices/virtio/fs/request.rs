//! One virtio-fs request: the FUSE message in a chain's device-readable buffers, answered
//! into its device-writable ones by the share's FUSE server. Requests the device screens out
//! (opcodes that are no FUSE operation, changes to a read-only share) get an error reply
//! without reaching the server; chains that cannot carry a message are returned unanswered.

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use tracing::debug;
use virtio_queue::DescriptorChain;
use vm_memory::ByteValued;

use super::read_only;
use super::Share;
use crate::devices::virtio::GuestMemoryMmap;

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("descriptor chain: {0}")]
    Chain(fuse_backend_rs::transport::Error),
    #[error("no FUSE header in the device-readable buffers: {0}")]
    ShortHeader(std::io::Error),
    #[error("cannot write the reply: {0}")]
    Reply(std::io::Error),
    #[error("FUSE server: {0}")]
    Fuse(fuse_backend_rs::Error),
}

/// Serves the request in `chain`; returns how many bytes of reply it wrote (0 for a request
/// that has none, like FORGET, or that was dropped).
pub fn serve(
    share: &Share,
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
) -> u32 {
    match answer(share, chain, mem) {
        // A reply is at most a header and 1 MiB of data, well within u32.
        Ok(len) => u32::try_from(len).unwrap_or(u32::MAX),
        Err(e) => {
            debug!(path = %share.path().display(), error = %e, "virtio-fs: request dropped");
            0
        }
    }
}

fn answer(
    share: &Share,
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
) -> Result<usize, RequestError> {
    let reader = Reader::from_descriptor_chain(mem, chain.clone()).map_err(RequestError::Chain)?;
    let mut writer = VirtioFsWriter::new(mem, chain).map_err(RequestError::Chain)?;
    let mut body = reader.clone();
    let header: InHeader = body.read_obj().map_err(RequestError::ShortHeader)?;
    if let Some(errno) = screen(share.read_only(), &header, &mut body) {
        let reply = OutHeader {
            len: std::mem::size_of::<OutHeader>() as u32,
            error: -errno,
            unique: header.unique,
        };
        writer.write_obj(reply).map_err(RequestError::Reply)?;
        return Ok(reply.as_slice().len());
    }
    if header.opcode == Opcode::Init as u32 {
        share.start_session();
    }
    share
        .server()
        .handle_message(reader, writer.into(), None, None)
        .map_err(RequestError::Fuse)
}

/// The error a request gets from the device itself, if any.
fn screen(read_only: bool, header: &InHeader, body: &mut impl std::io::Read) -> Option<i32> {
    // Values below the last FUSE opcode that name no operation: the server turns every opcode
    // into its enum (for tracing) by transmuting it, which these would make undefined.
    if matches!(header.opcode, 0 | 7 | 19) {
        return Some(libc::ENOSYS);
    }
    if read_only && read_only::changes_share(header.opcode, body) {
        return Some(libc::EROFS);
    }
    None
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, NEXT, WRITE};
    use fuse_backend_rs::abi::fuse_abi::{
        Attr, CreateIn, EntryOut, InitIn, InitOut, Opcode, OpenIn, OpenOut, ReadIn, WriteIn,
    };
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    const REQ: u64 = 0x10_0000;
    const RESP: u64 = 0x40_0000;
    const RESP_LEN: u32 = 0x2_0000;
    pub const ROOT: u64 = 1;

    pub fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    /// A FUSE request: the header (its length filled in) and the body parts.
    pub fn message(opcode: Opcode, nodeid: u64, parts: &[&[u8]]) -> Vec<u8> {
        let body: Vec<u8> = parts.concat();
        let header = InHeader {
            len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
            opcode: opcode as u32,
            unique: 0x1234,
            nodeid,
            uid: 0,
            gid: 0,
            pid: 1,
            padding: 0,
        };
        [header.as_slice(), &body].concat()
    }

    /// A share of a fresh directory, and the guest memory its requests go through.
    pub struct Session {
        pub dir: tempfile::TempDir,
        pub share: Share,
        pub mem: GuestMemoryMmap,
    }

    impl Session {
        /// `dir`/share served (read-only if asked), after FUSE_INIT.
        pub fn new(read_only: bool) -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("share")).unwrap();
            let share = Share::open(&dir.path().join("share"), read_only).unwrap();
            let s = Session {
                dir,
                share,
                mem: guest_memory(),
            };
            let init = InitIn {
                major: 7,
                minor: 31,
                max_readahead: 0x2_0000,
                flags: 0,
            };
            let (header, out) = s.call(&message(Opcode::Init, 0, &[init.as_slice()]));
            assert_eq!(header.error, 0);
            let out = InitOut::from_slice(&out[..std::mem::size_of::<InitOut>()]).unwrap();
            assert_eq!(out.major, 7);
            assert!(s.share.in_session());
            s
        }

        pub fn path(&self, name: &str) -> std::path::PathBuf {
            self.dir.path().join("share").join(name)
        }

        /// Runs one chain of `descs`; returns the used length.
        pub fn run(&self, descs: &[RawDescriptor]) -> u32 {
            let q = MockSplitQueue::new(&self.mem, 16);
            q.add_desc_chains(descs, 0).unwrap();
            let mut queue: Queue = q.create_queue().unwrap();
            let chain = queue.pop_descriptor_chain(&self.mem).unwrap();
            serve(&self.share, chain, &self.mem)
        }

        /// Sends `msg` with a reply buffer; returns the reply's header and body.
        pub fn call(&self, msg: &[u8]) -> (OutHeader, Vec<u8>) {
            self.mem.write_slice(msg, GuestAddress(REQ)).unwrap();
            self.mem
                .write_slice(&[0u8; 16], GuestAddress(RESP))
                .unwrap();
            let len = self.run(&[
                d(REQ, msg.len() as u32, NEXT, 1),
                d(RESP, RESP_LEN, WRITE, 0),
            ]);
            assert!(len as usize >= std::mem::size_of::<OutHeader>(), "no reply");
            let mut reply = vec![0u8; len as usize];
            self.mem.read_slice(&mut reply, GuestAddress(RESP)).unwrap();
            let header = *OutHeader::from_slice(&reply[..16]).unwrap();
            assert_eq!(header.len, len);
            assert_eq!(header.unique, 0x1234);
            (header, reply[16..].to_vec())
        }

        /// LOOKUP of `name` in `parent`: the entry, or the error.
        pub fn lookup(&self, parent: u64, name: &str) -> Result<EntryOut, i32> {
            let name = format!("{name}\0");
            let (h, out) = self.call(&message(Opcode::Lookup, parent, &[name.as_bytes()]));
            if h.error != 0 {
                return Err(-h.error);
            }
            Ok(*EntryOut::from_slice(&out[..std::mem::size_of::<EntryOut>()]).unwrap())
        }

        /// OPEN of `nodeid`: the file handle, or the error.
        pub fn open(&self, nodeid: u64, flags: i32) -> Result<u64, i32> {
            let open = OpenIn {
                flags: flags as u32,
                fuse_flags: 0,
            };
            let (h, out) = self.call(&message(Opcode::Open, nodeid, &[open.as_slice()]));
            if h.error != 0 {
                return Err(-h.error);
            }
            Ok(OpenOut::from_slice(&out[..16]).unwrap().fh)
        }

        /// READ of `size` bytes at 0: the data, or the error.
        pub fn read(&self, nodeid: u64, fh: u64, size: u32) -> Result<Vec<u8>, i32> {
            let read = ReadIn {
                fh,
                size,
                ..Default::default()
            };
            let (h, out) = self.call(&message(Opcode::Read, nodeid, &[read.as_slice()]));
            if h.error != 0 {
                return Err(-h.error);
            }
            Ok(out)
        }

        /// CREATE of `name` in `parent` with `mode`: the error, if any.
        pub fn create(&self, parent: u64, name: &str, mode: u32) -> Result<(), i32> {
            let create = CreateIn {
                flags: (libc::O_WRONLY | libc::O_CREAT) as u32,
                mode: libc::S_IFREG | mode,
                umask: 0,
                fuse_flags: 0,
            };
            let name = format!("{name}\0");
            let msg = message(
                Opcode::Create,
                parent,
                &[create.as_slice(), name.as_bytes()],
            );
            match self.call(&msg).0.error {
                0 => Ok(()),
                e => Err(-e),
            }
        }
    }

    fn attr_mode(e: &EntryOut) -> u32 {
        let attr: Attr = e.attr;
        attr.mode & libc::S_IFMT
    }

    #[test]
    fn a_host_file_is_looked_up_opened_and_read() {
        let s = Session::new(false);
        std::fs::write(s.path("hello"), b"from the host").unwrap();
        let entry = s.lookup(ROOT, "hello").unwrap();
        assert_eq!(attr_mode(&entry), libc::S_IFREG);
        let fh = s.open(entry.nodeid, libc::O_RDONLY).unwrap();
        assert_eq!(s.read(entry.nodeid, fh, 4096).unwrap(), b"from the host");
        assert_eq!(s.lookup(ROOT, "missing").unwrap_err(), libc::ENOENT);
    }

    #[test]
    fn a_created_file_reaches_the_host_with_the_mode_asked_for() {
        let s = Session::new(false);
        s.create(ROOT, "new", 0o664).unwrap();
        let meta = std::fs::metadata(s.path("new")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        // The test thread has the process's umask; the worker clears its own, and the
        // server applies the guest's (0 here). Only group/other write bits may differ here.
        assert_eq!(meta.permissions().mode() & 0o755, 0o644);
    }

    #[test]
    fn a_read_only_share_refuses_every_change_with_erofs() {
        let s = Session::new(true);
        std::fs::write(s.path("kept"), b"as it was").unwrap();
        assert_eq!(s.create(ROOT, "new", 0o644).unwrap_err(), libc::EROFS);
        assert!(!s.path("new").exists());
        let entry = s.lookup(ROOT, "kept").unwrap();
        assert_eq!(s.open(entry.nodeid, libc::O_RDWR).unwrap_err(), libc::EROFS);
        assert_eq!(
            s.open(entry.nodeid, libc::O_RDONLY | libc::O_TRUNC)
                .unwrap_err(),
            libc::EROFS
        );
        let fh = s.open(entry.nodeid, libc::O_RDONLY).unwrap();
        let write = WriteIn {
            fh,
            size: 4,
            ..Default::default()
        };
        let msg = message(Opcode::Write, entry.nodeid, &[write.as_slice(), b"evil"]);
        assert_eq!(s.call(&msg).0.error, -libc::EROFS);
        let msg = message(Opcode::Unlink, ROOT, &[b"kept\0"]);
        assert_eq!(s.call(&msg).0.error, -libc::EROFS);
        assert_eq!(std::fs::read(s.path("kept")).unwrap(), b"as it was");
        assert_eq!(s.read(entry.nodeid, fh, 100).unwrap(), b"as it was");
    }

    #[test]
    fn symlinks_and_dot_dot_do_not_lead_out_of_the_share() {
        let s = Session::new(false);
        std::fs::write(s.dir.path().join("secret"), b"host only").unwrap();
        std::os::unix::fs::symlink("../secret", s.path("up")).unwrap();
        std::os::unix::fs::symlink(s.dir.path().join("secret"), s.path("abs")).unwrap();
        for name in ["up", "abs"] {
            let link = s.lookup(ROOT, name).unwrap();
            assert_eq!(attr_mode(&link), libc::S_IFLNK, "{name}");
            // The server never opens a symlink for I/O: the guest resolves it itself.
            assert!(s.open(link.nodeid, libc::O_RDONLY).is_err(), "{name}");
            let (h, target) = s.call(&message(Opcode::Readlink, link.nodeid, &[]));
            assert_eq!(h.error, 0);
            assert!(!target.is_empty());
        }
        // `..` of the root is the root; names with a slash are refused.
        assert_eq!(s.lookup(ROOT, "..").unwrap().nodeid, ROOT);
        assert!(s.lookup(ROOT, "../secret").is_err());
        assert!(s.lookup(ROOT, "secret").is_err());
    }

    #[test]
    fn hostile_chains_get_an_error_or_are_dropped() {
        let s = Session::new(false);
        let lookup = message(Opcode::Lookup, ROOT, &[b"x\0"]);
        s.mem.write_slice(&lookup, GuestAddress(REQ)).unwrap();
        let n = lookup.len() as u32;
        // A header cut short, nothing readable, the request in a writable buffer.
        assert_eq!(
            s.run(&[d(REQ, 10, NEXT, 1), d(RESP, RESP_LEN, WRITE, 0)]),
            0
        );
        assert_eq!(s.run(&[d(RESP, RESP_LEN, WRITE, 0)]), 0);
        assert_eq!(s.run(&[d(REQ, n, WRITE, 0)]), 0);
        // No reply buffer, a reply buffer too short for a header.
        assert_eq!(s.run(&[d(REQ, n, 0, 0)]), 0);
        assert_eq!(s.run(&[d(REQ, n, NEXT, 1), d(RESP, 8, WRITE, 0)]), 0);
        // Buffers outside guest memory, or longer than it.
        assert_eq!(
            s.run(&[d(1 << 40, n, NEXT, 1), d(RESP, RESP_LEN, WRITE, 0)]),
            0
        );
        assert_eq!(
            s.run(&[d(REQ, n, NEXT, 1), d(1 << 40, RESP_LEN, WRITE, 0)]),
            0
        );
        assert_eq!(
            s.run(&[d(REQ, u32::MAX, NEXT, 1), d(RESP, RESP_LEN, WRITE, 0)]),
            0
        );
        assert_eq!(s.run(&[d(REQ, n, NEXT, 1), d(RESP, u32::MAX, WRITE, 0)]), 0);
        // A loop: the chain ends after as many descriptors as the queue has.
        s.run(&[d(REQ, n, NEXT, 1), d(RESP, RESP_LEN, WRITE | NEXT, 0)]);

        // Opcodes that name no operation; a header claiming more than the server takes.
        for opcode in [0u32, 7, 19, 4096, u32::MAX] {
            let mut msg = lookup.clone();
            msg[4..8].copy_from_slice(&opcode.to_le_bytes());
            let (h, _) = s.call(&msg);
            assert_eq!(h.error, -libc::ENOSYS, "opcode {opcode}");
        }
        let mut msg = lookup.clone();
        msg[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_ne!(s.call(&msg).0.error, 0);
        // Bodies too short for their operation, a name without its NUL.
        for op in [
            Opcode::Open,
            Opcode::Read,
            Opcode::Write,
            Opcode::Create,
            Opcode::Setattr,
        ] {
            let msg = message(op, ROOT, &[&[1, 2]]);
            s.mem.write_slice(&msg, GuestAddress(REQ)).unwrap();
            s.run(&[
                d(REQ, msg.len() as u32, NEXT, 1),
                d(RESP, RESP_LEN, WRITE, 0),
            ]);
        }
        s.run(&[d(REQ, n - 1, NEXT, 1), d(RESP, RESP_LEN, WRITE, 0)]);
        // A write claiming more data than it carries; a read into a short buffer.
        std::fs::write(s.path("f"), vec![7u8; 8192]).unwrap();
        let f = s.lookup(ROOT, "f").unwrap();
        let fh = s.open(f.nodeid, libc::O_RDWR).unwrap();
        let write = WriteIn {
            fh,
            size: 1 << 20,
            ..Default::default()
        };
        let msg = message(Opcode::Write, f.nodeid, &[write.as_slice(), b"four"]);
        let (h, out) = s.call(&msg);
        // Only what the request carries is written, and the reply says so.
        assert_eq!(h.error, 0);
        assert_eq!(u32::from_le_bytes(out[..4].try_into().unwrap()), 4);
        assert_eq!(std::fs::read(s.path("f")).unwrap()[..5], *b"four\x07");
        let read = ReadIn {
            fh,
            size: 8192,
            ..Default::default()
        };
        let msg = message(Opcode::Read, f.nodeid, &[read.as_slice()]);
        s.mem.write_slice(&msg, GuestAddress(REQ)).unwrap();
        s.run(&[d(REQ, msg.len() as u32, NEXT, 1), d(RESP, 100, WRITE, 0)]);
        // Requests on inodes and handles the guest never got.
        assert!(s.open(0xdead, libc::O_RDONLY).is_err());
        assert!(s.read(f.nodeid, 0xdead, 10).is_err());
        // And the session still works.
        assert_eq!(s.read(f.nodeid, fh, 5).unwrap(), b"four\x07");
    }
}
