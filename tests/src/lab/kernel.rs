//! The lab's kernel: Debian's `linux-image-amd64`, booted uncompressed.
//! The XZ payload of `/boot/vmlinuz-<ver>` is extracted once into the build cache.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Start of an XZ stream: the payload of an XZ-compressed bzImage begins with it.
const XZ_MAGIC: [u8; 6] = [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no Debian kernel found: /boot/vmlinuz-* with a matching /lib/modules/<ver> (install linux-image-amd64)")]
    NoKernel,
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} holds no XZ payload (magic FD 37 7A 58 5A 00 not found)")]
    NoXzPayload { path: PathBuf },
    #[error("cannot decompress the XZ payload of {path}: {source}")]
    Decompress { path: PathBuf, source: io::Error },
    #[error("cannot write the cached vmlinux {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// A Debian kernel installed on the host.
#[derive(Debug, Clone)]
pub struct HostKernel {
    /// Release string, e.g. `6.1.0-56-amd64`.
    pub version: String,
    /// The compressed bzImage.
    pub vmlinuz: PathBuf,
    /// Its module tree.
    pub modules_dir: PathBuf,
}

impl HostKernel {
    /// Picks the running kernel's release when it is installed, else the newest one in /boot.
    pub fn find() -> Result<Self, Error> {
        let running = nix::sys::utsname::uname()
            .ok()
            .map(|u| u.release().to_string_lossy().into_owned());
        let mut versions: Vec<String> = fs::read_dir("/boot")
            .map_err(|source| Error::Read {
                path: "/boot".into(),
                source,
            })?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("vmlinuz-"))
                    .map(str::to_owned)
            })
            .filter(|v| {
                Path::new("/lib/modules")
                    .join(v)
                    .join("modules.dep")
                    .exists()
            })
            .collect();
        versions.sort();
        let version = match running {
            Some(r) if versions.contains(&r) => r,
            _ => versions.pop().ok_or(Error::NoKernel)?,
        };
        Ok(Self {
            vmlinuz: PathBuf::from(format!("/boot/vmlinuz-{version}")),
            modules_dir: Path::new("/lib/modules").join(&version),
            version,
        })
    }

    /// Returns the uncompressed kernel, extracting it into `cache_dir` on first use.
    pub fn vmlinux(&self, cache_dir: &Path) -> Result<PathBuf, Error> {
        let bz = fs::read(&self.vmlinuz).map_err(|source| Error::Read {
            path: self.vmlinuz.clone(),
            source,
        })?;
        let hash = hex::encode(&Sha256::digest(&bz)[..8]);
        let dir = cache_dir.join(format!("kernel-{}-{hash}", self.version));
        let out = dir.join("vmlinux");
        if out.exists() {
            return Ok(out);
        }
        let vmlinux = extract_xz_payload(&bz).map_err(|e| match e {
            None => Error::NoXzPayload {
                path: self.vmlinuz.clone(),
            },
            Some(source) => Error::Decompress {
                path: self.vmlinuz.clone(),
                source,
            },
        })?;
        write_atomic(&out, &vmlinux).map_err(|source| Error::Write {
            path: out.clone(),
            source,
        })?;
        Ok(out)
    }
}

/// Decompresses the first XZ stream found in `image`; `Err(None)` when there is none.
pub fn extract_xz_payload(image: &[u8]) -> Result<Vec<u8>, Option<io::Error>> {
    let start = image
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .ok_or(None)?;
    // Drive the decoder by hand: the bzImage goes on after the stream ends, and the
    // reader adapters treat those bytes as a corrupt second stream.
    let mut stream =
        xz2::stream::Stream::new_stream_decoder(u64::MAX, 0).map_err(|e| Some(e.into()))?;
    let mut input = &image[start..];
    let mut out = Vec::with_capacity(image.len() * 8);
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        }
        let before = stream.total_in();
        let status = stream
            .process_vec(input, &mut out, xz2::stream::Action::Run)
            .map_err(|e| Some(e.into()))?;
        input = &input[(stream.total_in() - before) as usize..];
        match status {
            xz2::stream::Status::StreamEnd => return Ok(out),
            _ if input.is_empty() && out.len() < out.capacity() => {
                return Err(Some(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "XZ stream is truncated",
                )))
            }
            _ => {}
        }
    }
}

/// Writes `data` to `path` through a temporary file and a rename, so that concurrent lab
/// starts never see a half-written cache entry.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    io::Write::write_all(&mut tmp, data)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_an_xz_stream_after_a_prefix() {
        let payload = b"hello vmlinux".repeat(100);
        let mut xz = Vec::new();
        let mut enc = xz2::read::XzEncoder::new(&payload[..], 6);
        std::io::Read::read_to_end(&mut enc, &mut xz).unwrap();
        let mut image = b"bzImage setup code".to_vec();
        image.extend_from_slice(&xz);
        image.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(extract_xz_payload(&image).unwrap(), payload);
    }

    #[test]
    fn reports_a_missing_payload() {
        assert!(matches!(extract_xz_payload(b"no payload here"), Err(None)));
    }
}
