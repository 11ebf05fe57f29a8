//! Invariant 1 of DESIGN.md: data stays readable without lifeboat.
//!
//! `tests/format/lifeboat_extract.py` follows `service/FORMAT.md` with
//! nothing but the stock `age` and `zstd` tools and Python's standard
//! library. If it restores what lifeboat stored, the document is enough.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use lifeboat_tests::cli::{Installation, Rng, write_file};

#[test]
fn the_format_document_is_enough_to_restore() -> Result<()> {
    let installation = Installation::local()?;
    let src = installation.path("src");
    let mut rng = Rng::new(0x0f0e_a7a1);
    write_file(&src.join("big.bin"), &rng.bytes(3 * 1024 * 1024 + 17))?;
    write_file(
        &src.join("notes/a.txt"),
        "lifeboat ".repeat(20_000).as_bytes(),
    )?;
    write_file(&src.join("notes/empty"), b"")?;
    write_file(&src.join("deep/er/still/x.json"), br#"{"k": [1, 2, 3]}"#)?;
    std::os::unix::fs::symlink("notes/a.txt", src.join("link"))?;
    std::fs::hard_link(src.join("big.bin"), src.join("big-again.bin"))?;
    installation.write_config(
        &[],
        &[("home", r#"{ kind = "directory", paths = ["src"] }"#)],
    )?;
    installation.backup("home")?;

    let out = installation.path("extracted");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("format/lifeboat_extract.py");
    let run = Command::new("python3")
        .arg(&script)
        .arg("--repo")
        .arg(installation.repo_dir()?)
        .arg("--identity")
        .arg(installation.restore_key())
        .arg("--out")
        .arg(&out)
        .output()
        .context("python3 runs the extraction script")?;
    ensure!(
        run.status.success(),
        "the script restores the snapshot: {}",
        String::from_utf8_lossy(&run.stderr)
    );

    let restored = out.join(src.strip_prefix("/").unwrap_or(&src));
    for name in [
        "big.bin",
        "big-again.bin",
        "notes/a.txt",
        "notes/empty",
        "deep/er/still/x.json",
    ] {
        let (want, got) = (
            std::fs::read(src.join(name))?,
            std::fs::read(restored.join(name))?,
        );
        ensure!(want == got, "{name} is restored byte for byte");
    }
    ensure!(
        std::fs::read_link(restored.join("link"))? == Path::new("notes/a.txt"),
        "the symlink keeps its target"
    );
    let (a, b) = (
        std::fs::metadata(restored.join("big.bin"))?,
        std::fs::metadata(restored.join("big-again.bin"))?,
    );
    ensure!(a.ino() == b.ino(), "hard links stay one file");
    Ok(())
}
