//! Reading a mongoexport file: one document a line (the default), or a JSON array
//! (`--jsonArray`). Every document keeps the line it starts on, for the summary.

use anyhow::{bail, Context};
use serde_json::Value;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

pub struct Document {
    pub line: usize,
    /// The parsed object, or why the text is not one.
    pub value: Result<Value, String>,
}

/// Lines are read lazily. An array is parsed whole first: a syntax error inside it leaves no
/// way to find the next element, so it refuses the file before anything is written.
pub fn read(path: &Path) -> anyhow::Result<Box<dyn Iterator<Item = Document>>> {
    let mut reader = BufReader::new(File::open(path).with_context(|| format!("cannot open {}", path.display()))?);
    let starts_with_bracket = loop {
        let buffer = reader.fill_buf()?;
        match buffer.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(at) => break buffer[at] == b'[',
            None if buffer.is_empty() => break false,
            None => {
                let n = buffer.len();
                reader.consume(n);
            }
        }
    };
    if !starts_with_bracket {
        return Ok(Box::new(lines(reader)));
    }
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes)?;
    Ok(Box::new(array(&bytes).with_context(|| format!("{} is not a valid JSON array", path.display()))?.into_iter()))
}

fn lines(reader: impl BufRead) -> impl Iterator<Item = Document> {
    reader.split(b'\n').enumerate().filter_map(|(index, line)| {
        let line_number = index + 1;
        let value = match line {
            Err(e) => Err(format!("cannot be read: {e}")),
            Ok(bytes) if bytes.trim_ascii().is_empty() => return None,
            Ok(bytes) => object(serde_json::from_slice(&bytes)),
        };
        Some(Document { line: line_number, value })
    })
}

fn object(parsed: serde_json::Result<Value>) -> Result<Value, String> {
    match parsed {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// The elements of a JSON array, each with the line it starts on (`bytes` starts at `[`).
fn array(bytes: &[u8]) -> anyhow::Result<Vec<Document>> {
    let line_at = |offset: usize| 1 + bytes[..offset].iter().filter(|&&b| b == b'\n').count();
    let skip_space = |mut at: usize| {
        while bytes.get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        at
    };
    let mut documents = Vec::new();
    let mut at = skip_space(bytes.iter().position(|&b| b == b'[').map_or(0, |p| p + 1));
    if bytes.get(at) == Some(&b']') {
        return Ok(documents);
    }
    loop {
        let mut stream = serde_json::Deserializer::from_slice(&bytes[at..]).into_iter::<Value>();
        let element = match stream.next() {
            Some(Ok(value)) => value,
            Some(Err(e)) => bail!("line {}: {e}", line_at(at)),
            None => bail!("line {}: the array is not closed", line_at(at)),
        };
        documents.push(Document { line: line_at(at), value: object(Ok(element)) });
        at = skip_space(at + stream.byte_offset());
        match bytes.get(at) {
            Some(b',') => at = skip_space(at + 1),
            Some(b']') if bytes[at + 1..].trim_ascii().is_empty() => return Ok(documents),
            _ => bail!("line {}: expected , or ] after an element", line_at(at.min(bytes.len()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_elements_keep_their_lines() {
        let docs = array(b"[\n{\"a\": 1},\n  {\"b\": 2}, 3\n]\n").unwrap();
        let lines: Vec<usize> = docs.iter().map(|d| d.line).collect();
        assert_eq!(lines, [2, 3, 3]);
        assert!(docs[2].value.is_err(), "a non-object element is rejected, not fatal");
        assert!(array(b"[{\"a\": 1} {\"b\": 2}]").is_err());
        assert!(array(b"[]").unwrap().is_empty());
    }

    #[test]
    fn a_malformed_line_is_a_rejected_document() {
        let docs: Vec<Document> = lines(&b"{\"a\": 1}\n\n{oops\n[1]\n"[..]).collect();
        assert_eq!(docs.iter().map(|d| d.line).collect::<Vec<_>>(), [1, 3, 4]);
        assert!(docs[0].value.is_ok() && docs[1].value.is_err() && docs[2].value.is_err());
    }
}
