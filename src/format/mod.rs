//! The FM export format as NHN publishes it (DESIGN section 5): the encryption envelope around every
//! file, the `Index.txt` list, the folder layout, safe reading of the zip inside each envelope, and the
//! streaming parse of the XML into [`crate::model`].
//!
//! Everything here reads input from outside: every length, name and element is checked, and errors
//! never quote personal data from the file.

pub mod archive;
pub mod envelope;
pub mod index;
pub mod layout;
pub mod patient_file;
pub mod xml;
