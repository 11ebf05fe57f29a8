//! The text formats lifeboat writes for other programs to read, with one
//! escape function each: [`xml`] (the drill's JUnit report, libvirt domain
//! definitions), [`html`] (the status page) and [`prometheus`] (`/metrics`
//! and the drill's textfile metrics).
//!
//! It knows nothing of what the documents say; the status page, the API and
//! the drill reports build their documents with it.

pub mod html;
pub mod prometheus;
pub mod xml;
