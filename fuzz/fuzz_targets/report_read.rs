//! The report reader (`pmet report`, `pmet diff`) on arbitrary bytes: it
//! must return an error, never panic; and whatever loads must render.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pmet::{
    render::{report_text::report_text, style::Style, svg::plots_svg, trace_events::trace_events},
    report::{diff::diff, read::parse_report},
};

fuzz_target!(|data: &[u8]| {
    if let Ok(l) = parse_report(data, "fuzz.json") {
        let r = &l.report;
        let _ = report_text(r, "fuzz.json", &l.missing, 100, Style::default());
        let _ = diff(r, r);
        let _ = plots_svg(r);
        let _ = trace_events(r);
    }
});
