//! Fixtures the tests make themselves: real PDFs (written with lopdf, re-exported by
//! pdf-extract), real DOCX archives (written with the zip crate) and hand-laid zip bombs.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{Cursor, Write};

use flate2::write::DeflateEncoder;
use flate2::Compression;
use pdf_extract::content::{Content, Operation};
use pdf_extract::encryption::{EncryptionState, EncryptionVersion, Permissions};
use pdf_extract::{Dictionary, Document, Object, Stream, StringFormat};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// A PDF with one page per string, each drawn in Helvetica.
pub fn pdf(pages: &[&str]) -> Vec<u8> {
    save(&mut pdf_document(pages))
}

/// A PDF encrypted with RC4 (128 bits) under the given passwords.
pub fn encrypted_pdf(pages: &[&str], user_password: &str) -> Vec<u8> {
    let mut document = pdf_document(pages);
    // The file identifier goes into the key derivation, so encryption requires one.
    let id = Object::String(b"colloquy-fixture".to_vec(), StringFormat::Literal);
    document.trailer.set("ID", Object::Array(vec![id.clone(), id]));
    let version = EncryptionVersion::V2 {
        document: &document,
        owner_password: "owner secret",
        user_password,
        key_length: 128,
        permissions: Permissions::default(),
    };
    let state = EncryptionState::try_from(version).unwrap();
    document.encrypt(&state).unwrap();
    save(&mut document)
}

/// A PDF whose font names an encoding pdf-extract does not know: its parser panics on it.
pub fn pdf_that_panics_the_parser() -> Vec<u8> {
    let mut document = pdf_document(&["never read"]);
    let fonts: Vec<_> = document
        .objects
        .iter()
        .filter(|(_, object)| {
            object
                .as_dict()
                .is_ok_and(|dict| dict.get(b"Type").is_ok_and(|kind| kind.as_name().is_ok_and(|name| name == b"Font")))
        })
        .map(|(id, _)| *id)
        .collect();
    for id in fonts {
        if let Ok(font) = document.get_object_mut(id).and_then(Object::as_dict_mut) {
            font.set("Encoding", Object::Name(b"NoSuchEncoding".to_vec()));
        }
    }
    save(&mut document)
}

fn pdf_document(pages: &[&str]) -> Document {
    let mut document = Document::with_version("1.5");
    let pages_id = document.new_object_id();
    let mut font = Dictionary::new();
    font.set("Type", Object::Name(b"Font".to_vec()));
    font.set("Subtype", Object::Name(b"Type1".to_vec()));
    font.set("BaseFont", Object::Name(b"Helvetica".to_vec()));
    let font_id = document.add_object(font);
    let mut font_names = Dictionary::new();
    font_names.set("F1", Object::Reference(font_id));
    let mut resources = Dictionary::new();
    resources.set("Font", Object::Dictionary(font_names));
    let resources_id = document.add_object(resources);
    let mut kids = Vec::new();
    for text in pages {
        let content = Content {
            operations: vec![
                Operation::new("BT", vec![]),
                Operation::new("Tf", vec![Object::Name(b"F1".to_vec()), 12.into()]),
                Operation::new("Td", vec![72.into(), 720.into()]),
                Operation::new("Tj", vec![Object::string_literal(*text)]),
                Operation::new("ET", vec![]),
            ],
        };
        let content_id = document.add_object(Stream::new(Dictionary::new(), content.encode().unwrap()));
        let mut page = Dictionary::new();
        page.set("Type", Object::Name(b"Page".to_vec()));
        page.set("Parent", Object::Reference(pages_id));
        page.set("Contents", Object::Reference(content_id));
        kids.push(Object::Reference(document.add_object(page)));
    }
    let mut pages_dict = Dictionary::new();
    pages_dict.set("Type", Object::Name(b"Pages".to_vec()));
    pages_dict.set("Count", Object::Integer(i64::try_from(kids.len()).unwrap()));
    pages_dict.set("Kids", Object::Array(kids));
    pages_dict.set("Resources", Object::Reference(resources_id));
    pages_dict.set("MediaBox", Object::Array(vec![0.into(), 0.into(), 612.into(), 792.into()]));
    document.objects.insert(pages_id, Object::Dictionary(pages_dict));
    let mut catalog = Dictionary::new();
    catalog.set("Type", Object::Name(b"Catalog".to_vec()));
    catalog.set("Pages", Object::Reference(pages_id));
    let catalog_id = document.add_object(catalog);
    document.trailer.set("Root", Object::Reference(catalog_id));
    document
}

fn save(document: &mut Document) -> Vec<u8> {
    let mut bytes = Vec::new();
    document.save_to(&mut bytes).unwrap();
    bytes
}

const CONTENT_TYPES: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>"#;

const RELS: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/></Relationships>"#;

/// A Word document with one `w:p` per string, laid out as Word lays it out.
pub fn docx(paragraphs: &[&str]) -> Vec<u8> {
    let body: String = paragraphs
        .iter()
        .map(|text| format!(r#"<w:p><w:r><w:t xml:space="preserve">{text}</w:t></w:r></w:p>"#))
        .collect();
    let document = format!(
        r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>{body}<w:sectPr/></w:body></w:document>"#
    );
    zip_of(&[
        ("[Content_Types].xml", CONTENT_TYPES.as_bytes()),
        ("_rels/.rels", RELS.as_bytes()),
        ("word/document.xml", document.as_bytes()),
    ])
}

/// A deflated zip archive of the given entries.
pub fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    for (name, data) in entries {
        writer.start_file(*name, options).unwrap();
        writer.write_all(data).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

/// How many bytes of zeros the bomb's `word/document.xml` inflates to.
pub const BOMB_SIZE: u32 = 200 * 1024 * 1024;

/// A zip bomb disguised as a Word document: `[Content_Types].xml`, then `word/document.xml`
/// holding [`BOMB_SIZE`] zero bytes, deflated (about 200 KB). Its local and central headers
/// declare `declared_size` as the uncompressed size: [`BOMB_SIZE`] for an honest bomb,
/// something small for one that lies.
///
/// Built by hand because deflating 200 MB in a debug build takes long: one MiB of zeros is
/// deflated once, ending with a sync flush (non-final blocks that refer only to bytes of
/// that MiB), and repeated; an empty final stored block closes the stream.
pub fn zip_bomb(declared_size: u32) -> Vec<u8> {
    const MIB: usize = 1024 * 1024;
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(&vec![0; MIB]).unwrap();
    encoder.flush().unwrap();
    let block = encoder.get_ref().clone();
    let copies = usize::try_from(BOMB_SIZE).unwrap() / MIB;
    let mut deflated = Vec::with_capacity(block.len() * copies + 5);
    for _ in 0..copies {
        deflated.extend_from_slice(&block);
    }
    deflated.extend_from_slice(&[0x01, 0x00, 0x00, 0xFF, 0xFF]);

    let mut one_mib = crc32fast::Hasher::new();
    one_mib.update(&vec![0; MIB]);
    let mut crc = crc32fast::Hasher::new();
    for _ in 0..copies {
        crc.combine(&one_mib);
    }
    let entries = [
        RawEntry {
            name: "[Content_Types].xml",
            method: 0,
            crc: crc32fast::hash(CONTENT_TYPES.as_bytes()),
            declared_size: u32::try_from(CONTENT_TYPES.len()).unwrap(),
            data: CONTENT_TYPES.as_bytes().to_vec(),
        },
        RawEntry { name: "word/document.xml", method: 8, crc: crc.finalize(), declared_size, data: deflated },
    ];
    raw_zip(&entries)
}

struct RawEntry {
    name: &'static str,
    method: u16,
    crc: u32,
    declared_size: u32,
    data: Vec<u8>,
}

/// Lays out local headers, data, central directory and end record (APPNOTE 4.3).
fn raw_zip(entries: &[RawEntry]) -> Vec<u8> {
    const DOS_DATE: u16 = ((2024 - 1980) << 9) | (1 << 5) | 1;
    let mut out = Vec::new();
    let mut central = Vec::new();
    for entry in entries {
        let offset = u32::try_from(out.len()).unwrap();
        let compressed = u32::try_from(entry.data.len()).unwrap();
        let name_len = u16::try_from(entry.name.len()).unwrap();
        let common = |bytes: &mut Vec<u8>| {
            bytes.extend_from_slice(&20u16.to_le_bytes()); // version needed
            bytes.extend_from_slice(&0u16.to_le_bytes()); // flags
            bytes.extend_from_slice(&entry.method.to_le_bytes());
            bytes.extend_from_slice(&0u16.to_le_bytes()); // time
            bytes.extend_from_slice(&DOS_DATE.to_le_bytes());
            bytes.extend_from_slice(&entry.crc.to_le_bytes());
            bytes.extend_from_slice(&compressed.to_le_bytes());
            bytes.extend_from_slice(&entry.declared_size.to_le_bytes());
            bytes.extend_from_slice(&name_len.to_le_bytes());
            bytes.extend_from_slice(&0u16.to_le_bytes()); // extra field length
        };
        out.extend_from_slice(b"PK\x03\x04");
        common(&mut out);
        out.extend_from_slice(entry.name.as_bytes());
        out.extend_from_slice(&entry.data);

        central.extend_from_slice(b"PK\x01\x02");
        central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        common(&mut central);
        central.extend_from_slice(&[0; 6]); // comment length, disk, internal attributes
        central.extend_from_slice(&[0; 4]); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(entry.name.as_bytes());
    }
    let central_offset = u32::try_from(out.len()).unwrap();
    let central_len = u32::try_from(central.len()).unwrap();
    let count = u16::try_from(entries.len()).unwrap();
    out.extend_from_slice(&central);
    out.extend_from_slice(b"PK\x05\x06");
    out.extend_from_slice(&[0; 4]); // this disk, the central directory's disk
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&central_len.to_le_bytes());
    out.extend_from_slice(&central_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // comment length
    out
}
