//! The history reader (`pmet history`, `pmet report RUN`, `pmet diff RUN`)
//! on an arbitrary file in place of the store: the user owns that file, so
//! its bytes are hostile. Opening, listing and reading a run must return an
//! error or data, never panic; whatever run loads must parse or be refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pmet::{history::with_store, report::read::parse_report};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("history.db");
    std::fs::write(&path, data).expect("write the store");
    let _ = with_store(&path, None, false, |h| {
        for row in h.list(None, 50)? {
            if let Ok(json) = h.report_json(row.id) {
                let _ = parse_report(json.as_bytes(), "run");
            }
        }
        let _ = h.list(Some("make"), 5);
        Ok(())
    });
});
