//! Prepares the assets of the two pages the hub serves, so the binary carries only what they
//! need, already compressed: the API docs page (`/docs`) and the dashboard (`/`).
//!
//! Swagger UI comes from the release that the `utoipa-swagger-ui-vendored` crate carries as a zip
//! (so nothing is downloaded at build time except by cargo). Of its 4.3 MB `dist` folder the page
//! uses the bundle and the stylesheet; with our own page script and the licence they are gzipped
//! here (about 450 KB in all) and served as they are, with `Content-Encoding: gzip`. Each asset's
//! file name carries a hash of its content, so browsers may cache it for a year and still never
//! run a stale one after an upgrade. The page itself (`index.html`) is written here too, with
//! those names filled in.
//!
//! The dashboard's sources are in `dashboard/` (plain JS modules, a stylesheet, and uPlot with its
//! licence in `dashboard/vendor/`). A module names another as `"./name.js"`; those names are
//! replaced by the hashed ones, leaves first (the order of [`DASHBOARD`]), so a module's hash
//! covers the names of what it imports and a changed leaf renames everything that imports it.
//!
//! Output in `OUT_DIR/docs/` and `OUT_DIR/dashboard/`: the gzipped assets, `index.html`, and
//! `assets.rs`, a table that `src/api/docs.rs` (or `src/api/dashboard/assets.rs`) includes.

use std::error::Error;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Files taken from Swagger UI's release: the suffix of their path in the zip, the name they are
/// served under (before the hash), and their content type.
const FROM_SWAGGER_UI: &[(&str, &str, &str)] = &[
    (
        "/dist/swagger-ui-bundle.js",
        "swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
    ),
    (
        "/dist/swagger-ui.css",
        "swagger-ui.css",
        "text/css; charset=utf-8",
    ),
    // Swagger UI is Apache-2.0: its licence travels with it.
    (
        "/LICENSE",
        "swagger-ui-LICENSE.txt",
        "text/plain; charset=utf-8",
    ),
];

/// Our own files in `src/api/docs/`: name and content type.
const OURS: &[(&str, &str)] = &[
    ("hub-docs.js", "text/javascript; charset=utf-8"),
    ("hub-docs.css", "text/css; charset=utf-8"),
];

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// The dashboard's files in `dashboard/`, leaves first: a module may import only those above it.
const DASHBOARD: &[(&str, &str)] = &[
    // uPlot 1.6.32 (MIT), as released (`dist/`), with its licence.
    ("vendor/uPlot.iife.min.js", JS),
    ("vendor/uPlot.min.css", CSS),
    ("vendor/uPlot-LICENSE.txt", TEXT),
    ("style.css", CSS),
    ("api.js", JS),
    ("ui.js", JS),
    ("live.js", JS),
    ("chart.js", JS),
    ("fleet.js", JS),
    ("recent.js", JS),
    ("commands.js", JS),
    ("device.js", JS),
    ("sync.js", JS),
    ("alerts.js", JS),
    ("app.js", JS),
];

fn main() -> Result<()> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo::rerun-if-changed=build.rs");
    docs(&manifest, &out_dir.join("docs"))?;
    dashboard(&manifest, &out_dir.join("dashboard"))
}

/// The docs page: Swagger UI's files and ours.
fn docs(manifest: &Path, out: &Path) -> Result<()> {
    let source = manifest.join("src/api/docs");
    println!("cargo::rerun-if-changed={}", source.display());
    let zip = Zip::new(utoipa_swagger_ui_vendored::SWAGGER_UI_VENDORED)?;
    let mut assets = Vec::new();
    for (suffix, name, content_type) in FROM_SWAGGER_UI {
        let bytes = zip.file_ending_with(suffix)?;
        assets.push(Asset::new(name, content_type, bytes));
    }
    for (name, content_type) in OURS {
        let bytes = std::fs::read(source.join(name))?;
        assets.push(Asset::new(name, content_type, bytes));
    }
    write_page(&source.join("index.html"), &assets, out, "docs page")
}

/// The dashboard: each file with the hashed names of the modules it imports, then hashed itself.
fn dashboard(manifest: &Path, out: &Path) -> Result<()> {
    let source = manifest.join("dashboard");
    println!("cargo::rerun-if-changed={}", source.display());
    println!(
        "cargo::rerun-if-changed={}",
        source.join("vendor").display()
    );
    let mut assets: Vec<Asset> = Vec::new();
    for (path, content_type) in DASHBOARD {
        let mut bytes = std::fs::read(source.join(path))?;
        if *content_type == JS && !path.starts_with("vendor/") {
            let mut text = String::from_utf8(bytes)?;
            for earlier in &assets {
                text = text.replace(
                    &format!("\"./{}\"", earlier.name),
                    &format!("\"./{}\"", earlier.served_name),
                );
            }
            for (at, _) in text.match_indices("from \"./") {
                let target = text[at + 8..].split('"').next().unwrap_or("");
                if !assets.iter().any(|a| a.served_name == target) {
                    return Err(format!("{path}: imports {target}, not listed before it").into());
                }
            }
            bytes = text.into_bytes();
        }
        let name = path.rsplit('/').next().unwrap_or(path);
        assets.push(Asset::new(name, content_type, bytes));
    }
    write_page(&source.join("index.html"), &assets, out, "dashboard")
}

/// Writes `index.html` (from `page`, with `{name}` placeholders replaced by the served names),
/// every asset gzipped, and `assets.rs`, the table of them.
fn write_page(page: &Path, assets: &[Asset], out: &Path, what: &str) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let mut page = std::fs::read_to_string(page)?;
    for asset in assets {
        page = page.replace(&format!("{{{}}}", asset.name), &asset.served_name);
    }
    if let Some(at) = page.find("{") {
        let rest: String = page[at..].chars().take(40).collect();
        return Err(format!("index.html: a placeholder is left: {rest}").into());
    }
    std::fs::write(out.join("index.html"), page)?;

    let mut table = format!(
        "/// The {what}'s assets: served name, content type, gzipped bytes.\n\
         pub const ASSETS: &[(&str, &str, &[u8])] = &[\n"
    );
    let mut total = 0;
    for asset in assets {
        let gz = gzip(&asset.bytes)?;
        total += gz.len();
        let file = out.join(format!("{}.gz", asset.served_name));
        std::fs::write(&file, &gz)?;
        writeln!(
            table,
            "    ({:?}, {:?}, include_bytes!({:?})),",
            asset.served_name,
            asset.content_type,
            path_str(&file)?
        )?;
    }
    table.push_str("];\n");
    writeln!(
        table,
        "/// Bytes of all the gzipped assets together.\npub const ASSET_BYTES: usize = {total};"
    )?;
    std::fs::write(out.join("assets.rs"), table)?;
    Ok(())
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", path.display()).into())
}

/// One asset of the page.
struct Asset {
    name: &'static str,
    served_name: String,
    content_type: &'static str,
    bytes: Vec<u8>,
}

impl Asset {
    /// `name` becomes `stem.<hash>.ext`.
    fn new(name: &'static str, content_type: &'static str, bytes: Vec<u8>) -> Asset {
        let hash = crc32fast::hash(&bytes);
        let served_name = match name.rsplit_once('.') {
            Some((stem, ext)) => format!("{stem}.{hash:08x}.{ext}"),
            None => format!("{name}.{hash:08x}"),
        };
        Asset {
            name,
            served_name,
            content_type,
            bytes,
        }
    }
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    // The gzip header's time stays 0, so the output is the same on every build.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

/// Just enough of a zip reader for one well-formed archive: the central directory, stored and
/// deflated entries, CRC checked.
struct Zip<'a> {
    data: &'a [u8],
}

impl<'a> Zip<'a> {
    fn new(data: &'a [u8]) -> Result<Self> {
        Ok(Zip { data })
    }

    fn u16_at(&self, at: usize) -> Result<usize> {
        let b = self.data.get(at..at + 2).ok_or("zip: truncated")?;
        Ok(usize::from(u16::from_le_bytes([b[0], b[1]])))
    }

    fn u32_at(&self, at: usize) -> Result<u32> {
        let b = self.data.get(at..at + 4).ok_or("zip: truncated")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn usize_at(&self, at: usize) -> Result<usize> {
        Ok(usize::try_from(self.u32_at(at)?)?)
    }

    /// The end-of-central-directory record: found from the end (a comment may follow it).
    fn end_record(&self) -> Result<usize> {
        let last = self.data.len().checked_sub(22).ok_or("zip: too short")?;
        (0..=last)
            .rev()
            .take(22 + 65_535)
            .find(|&at| self.u32_at(at).is_ok_and(|sig| sig == 0x0605_4b50))
            .ok_or_else(|| "zip: no end of central directory".into())
    }

    /// The content of the one entry whose path ends with `suffix`.
    fn file_ending_with(&self, suffix: &str) -> Result<Vec<u8>> {
        let end = self.end_record()?;
        let entries = self.u16_at(end + 10)?;
        let mut at = self.usize_at(end + 16)?;
        let mut found = None;
        for _ in 0..entries {
            if self.u32_at(at)? != 0x0201_4b50 {
                return Err("zip: bad central directory entry".into());
            }
            let name_len = self.u16_at(at + 28)?;
            let name = self
                .data
                .get(at + 46..at + 46 + name_len)
                .ok_or("zip: truncated")?;
            if name.ends_with(suffix.as_bytes()) {
                if found.is_some() {
                    return Err(format!("zip: more than one file ends with {suffix}").into());
                }
                found = Some(at);
            }
            at += 46 + name_len + self.u16_at(at + 30)? + self.u16_at(at + 32)?;
        }
        let entry = found.ok_or_else(|| format!("zip: no file ends with {suffix}"))?;
        let method = self.u16_at(entry + 10)?;
        let crc = self.u32_at(entry + 16)?;
        let packed = self.usize_at(entry + 20)?;
        let size = self.usize_at(entry + 24)?;
        let local = self.usize_at(entry + 42)?;
        if self.u32_at(local)? != 0x0403_4b50 {
            return Err("zip: bad local header".into());
        }
        let start = local + 30 + self.u16_at(local + 26)? + self.u16_at(local + 28)?;
        let raw = self
            .data
            .get(start..start + packed)
            .ok_or("zip: truncated")?;
        let bytes = match method {
            0 => raw.to_vec(),
            8 => {
                let mut out = Vec::with_capacity(size);
                flate2::read::DeflateDecoder::new(raw).read_to_end(&mut out)?;
                out
            }
            other => return Err(format!("zip: compression method {other} not supported").into()),
        };
        if bytes.len() != size || crc32fast::hash(&bytes) != crc {
            return Err(format!("zip: {suffix} is damaged (size or CRC)").into());
        }
        Ok(bytes)
    }
}
