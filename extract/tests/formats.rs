//! Each accepted format, from bytes made here to the text a reader would see; and the format
//! decided by the bytes, not the name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use colloquy_extract::{extract, sniff, ExtractError, Extracted, Format, Limits, Unsupported, SNIFF_LEN};

/// What the ingest worker does: sniff the head, then extract the whole.
fn sniff_and_extract(bytes: &[u8], name: &str) -> (Format, Result<Extracted, ExtractError>) {
    let head = &bytes[..bytes.len().min(SNIFF_LEN)];
    let format = sniff(head, Some(name)).unwrap();
    (format, extract(format, bytes, &Limits::default()))
}

#[test]
fn plain_text() {
    let (format, extracted) = sniff_and_extract(b"Shopping list\r\n\r\n- eggs\r\n- flour\r\n", "list.txt");
    assert_eq!(format, Format::Text);
    assert_eq!(extracted, Ok(Extracted { text: "Shopping list\n\n- eggs\n- flour\n".into(), pages: None }));
}

#[test]
fn markdown() {
    let markdown = "# Release notes\n\nThe **new** importer reads [PDF](https://pdf.example) files\nand Word documents.\n\n* faster\n* safer\n";
    let (format, extracted) = sniff_and_extract(markdown.as_bytes(), "NOTES.md");
    assert_eq!(format, Format::Markdown);
    assert_eq!(
        extracted.unwrap().text,
        "Release notes\n\nThe new importer reads PDF files and Word documents.\n\nfaster\nsafer"
    );
}

#[test]
fn html_named_txt_is_html() {
    let html = "<!-- exported --><!DOCTYPE html><html><head><title>Ignored</title><style>h1{}</style></head>\
        <body><h1>Minutes</h1><p>Budget <em>approved</em>.</p><p>Next meeting:<br>Monday</p>\
        <script>alert('hidden')</script></body></html>";
    let (format, extracted) = sniff_and_extract(html.as_bytes(), "x.txt");
    assert_eq!(format, Format::Html);
    assert_eq!(extracted.unwrap().text, "Minutes\n\nBudget approved.\n\nNext meeting:\nMonday");
}

#[test]
fn pdf_named_docx_is_a_pdf_with_its_pages() {
    let bytes = support::pdf(&["Hello from page one.", "Second page text."]);
    let (format, extracted) = sniff_and_extract(&bytes, "a.docx");
    assert_eq!(format, Format::Pdf);
    assert_eq!(extracted, Ok(Extracted { text: "Hello from page one.\n\nSecond page text.".into(), pages: Some(2) }));
}

#[test]
fn pdf_with_a_user_password_is_encrypted() {
    let bytes = support::encrypted_pdf(&["Top secret."], "letmein");
    assert_eq!(sniff(&bytes, None), Ok(Format::Pdf));
    let error = extract(Format::Pdf, &bytes, &Limits::default()).unwrap_err();
    assert_eq!(error.code(), "encrypted");
}

#[test]
fn pdf_protected_only_by_an_owner_password_is_read() {
    let bytes = support::encrypted_pdf(&["Printable but not editable."], "");
    let extracted = extract(Format::Pdf, &bytes, &Limits::default()).unwrap();
    assert_eq!(extracted.text, "Printable but not editable.");
    assert_eq!(extracted.pages, Some(1));
}

#[test]
fn a_panic_in_the_pdf_parser_is_a_corrupt_file() {
    let bytes = support::pdf_that_panics_the_parser();
    let error = extract(Format::Pdf, &bytes, &Limits::default()).unwrap_err();
    assert_eq!(error.code(), "corrupt", "{error}");
}

#[test]
fn truncated_pdf_is_corrupt() {
    let bytes = support::pdf(&["Cut short."]);
    let error = extract(Format::Pdf, &bytes[..bytes.len() / 3], &Limits::default()).unwrap_err();
    assert_eq!(error.code(), "corrupt", "{error}");
}

#[test]
fn pdf_without_a_text_layer_has_no_text() {
    let bytes = support::pdf(&[""]);
    assert_eq!(extract(Format::Pdf, &bytes, &Limits::default()), Err(ExtractError::NoText));
}

#[test]
fn pdf_over_the_text_limit_is_too_large() {
    let bytes = support::pdf(&["0123456789", "0123456789"]);
    let limits = Limits { max_text_chars: 15, ..Limits::default() };
    assert_eq!(extract(Format::Pdf, &bytes, &limits), Err(ExtractError::TooLarge { limit: 15 }));
}

#[test]
fn docx_paragraphs_become_lines() {
    let bytes = support::docx(&["First paragraph.", "Second paragraph &amp; more."]);
    let (format, extracted) = sniff_and_extract(&bytes, "report.docx");
    assert_eq!(format, Format::Docx);
    assert_eq!(extracted, Ok(Extracted { text: "First paragraph.\nSecond paragraph & more.".into(), pages: None }));
}

#[test]
fn docx_named_txt_is_still_a_docx() {
    let bytes = support::docx(&["Renamed."]);
    assert_eq!(sniff(&bytes, Some("notes.txt")), Ok(Format::Docx));
}

#[test]
fn a_zip_that_is_not_a_docx_is_unsupported() {
    let bytes = support::zip_of(&[("photos/readme.txt", b"holiday pictures"), ("notes.txt", b"x")]);
    assert_eq!(sniff(&bytes, Some("archive.docx")), Err(Unsupported { detected: Some("application/zip") }));
    // Had the head been too short to tell, extraction decides from the central directory.
    let error = extract(Format::Docx, &bytes, &Limits::default()).unwrap_err();
    assert_eq!(error.code(), "unsupported");
    assert!(error.to_string().contains("word/document.xml"), "{error}");
}

#[test]
fn a_truncated_docx_is_corrupt() {
    let bytes = support::docx(&["Cut short."]);
    let error = extract(Format::Docx, &bytes[..bytes.len() - 30], &Limits::default()).unwrap_err();
    assert_eq!(error.code(), "corrupt", "{error}");
}

#[test]
fn docx_over_the_text_limit_is_too_large() {
    let bytes = support::docx(&["0123456789", "0123456789"]);
    let limits = Limits { max_text_chars: 15, ..Limits::default() };
    assert_eq!(extract(Format::Docx, &bytes, &limits), Err(ExtractError::TooLarge { limit: 15 }));
}

#[test]
fn a_png_named_txt_is_unsupported() {
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";
    assert_eq!(sniff(png, Some("notes.txt")), Err(Unsupported { detected: Some("image/png") }));
}

#[test]
fn random_bytes_are_unsupported() {
    // xorshift64: arbitrary but reproducible bytes.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let bytes: Vec<u8> = (0..SNIFF_LEN)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect();
    assert_eq!(sniff(&bytes, Some("data.md")), Err(Unsupported { detected: None }));
}
