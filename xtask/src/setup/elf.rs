//! ELF checks of the guest artifacts: the PVH entry note of vmlinux, a static agent.
//! A VMM loading vmlinux directly (PVH boot) finds the 32-bit entry point in that note.

use goblin::elf::{program_header::PT_INTERP, Elf};

/// ELF note owner and type of the PVH entry (XEN_ELFNOTE_PHYS32_ENTRY).
pub const XEN_NOTE_NAME: &str = "Xen";
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} is not an ELF file: {source}")]
    NotElf {
        what: String,
        source: goblin::error::Error,
    },
    #[error("{what} has no PVH entry note (Xen ELF note type 18); is CONFIG_PVH set?")]
    NoPvhNote { what: String },
    #[error("{what} is dynamically linked: it has an interpreter {interp:?} / libraries {libs:?}")]
    NotStatic {
        what: String,
        interp: Option<String>,
        libs: Vec<String>,
    },
}

/// The PVH entry address from the PT_NOTE segments of `bytes` (an ELF named `what`).
pub fn pvh_entry(what: &str, bytes: &[u8]) -> Result<u64, Error> {
    let elf = Elf::parse(bytes).map_err(|source| Error::NotElf {
        what: what.to_string(),
        source,
    })?;
    let entry = elf
        .iter_note_headers(bytes)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .find(|n| n.name == XEN_NOTE_NAME && n.n_type == XEN_ELFNOTE_PHYS32_ENTRY)
        .and_then(|n| match n.desc.len() {
            4 => Some(u32::from_le_bytes(n.desc.try_into().ok()?) as u64),
            8 => Some(u64::from_le_bytes(n.desc.try_into().ok()?)),
            _ => None,
        });
    entry.ok_or_else(|| Error::NoPvhNote {
        what: what.to_string(),
    })
}

/// Fails unless `bytes` is an ELF without PT_INTERP and without needed libraries.
pub fn check_static(what: &str, bytes: &[u8]) -> Result<(), Error> {
    let elf = Elf::parse(bytes).map_err(|source| Error::NotElf {
        what: what.to_string(),
        source,
    })?;
    let has_interp = elf.program_headers.iter().any(|p| p.p_type == PT_INTERP);
    if has_interp || !elf.libraries.is_empty() {
        return Err(Error::NotStatic {
            what: what.to_string(),
            interp: elf.interpreter.map(str::to_string),
            libs: elf.libraries.iter().map(|s| s.to_string()).collect(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_host_binary_is_not_static() {
        let bytes = std::fs::read("/bin/sh").unwrap();
        let err = check_static("/bin/sh", &bytes).unwrap_err();
        assert!(err.to_string().contains("dynamically linked"), "{err}");
    }

    #[test]
    fn busybox_static_is_static() {
        let bytes = std::fs::read("/bin/busybox").unwrap();
        check_static("/bin/busybox", &bytes).unwrap();
    }

    #[test]
    fn a_binary_without_the_note_is_rejected() {
        let bytes = std::fs::read("/bin/sh").unwrap();
        let err = pvh_entry("/bin/sh", &bytes).unwrap_err();
        assert!(matches!(err, Error::NoPvhNote { .. }), "{err}");
    }

    #[test]
    fn garbage_is_not_elf() {
        let err = pvh_entry("junk", b"not an elf at all, really").unwrap_err();
        assert!(
            err.to_string().starts_with("junk is not an ELF file"),
            "{err}"
        );
    }
}
