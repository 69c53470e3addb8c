import Foundation
import LongContextModel

/// Tokenizer throughput (`--variants tokenizer`): each model in `models` that is present (`make
/// models`) encodes the first `bytes` bytes of `text` (the KJV) once whole and once line by line,
/// on one thread (tokenizers are sequential). Rows: `N` the bytes, `M` the tokens, `bytesPerSecond`
/// and `tokensPerSecond`; `impl` names the model and the way (`whole`, `lines`).
func benchTokenizers(models: String, text path: String, bytes: Int) throws -> [Row] {
    guard let data = FileManager.default.contents(atPath: path) else {
        progress("tokenizer: \(path) missing (make corpus): skipped")
        return []
    }
    // Cut on a line boundary so the text stays valid UTF-8 and whole lines.
    var cut = min(bytes, data.count)
    while cut < data.count, data[cut - 1] != UInt8(ascii: "\n") { cut += 1 }
    let text = String(decoding: data.prefix(cut), as: UTF8.self)
    let lines = text.split(separator: "\n").map { String($0) + "\n" }   // the KJV has no empty lines
    var rows = [Row]()
    for file in ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"] {
        let model = models + "/" + file
        guard FileManager.default.fileExists(atPath: model) else {
            progress("tokenizer: \(model) missing (make models): skipped")
            continue
        }
        let lm = try LanguageModel(path: model)
        let name = URL(fileURLWithPath: file).deletingPathExtension().lastPathComponent
        for way in ["whole", "lines"] {
            progress("tokenizer \(name) \(way)")
            var tokens = 0
            let t = try measure(minRuns: 3, budget: 2) {
                tokens = way == "whole" ? lm.encode(text, addSpecial: false).count
                    : lines.reduce(0) { $0 + lm.encode($1, addSpecial: false).count }
            }
            var row = Row(variant: "tokenizer", impl: "\(name) \(way)", N: cut, M: tokens)
            row.threads = 1
            row.seconds = t.median
            row.minSeconds = t.min
            row.runs = t.runs
            row.bytesPerSecond = Double(cut) / t.median
            row.tokensPerSecond = Double(tokens) / t.median
            rows.append(row)
        }
    }
    return rows
}

/// The tokenizer rows as a Markdown table (empty when there are none).
func tokenizerTable(_ rows: [Row]) -> String {
    let tok = rows.filter { $0.variant == "tokenizer" }
    guard !tok.isEmpty else { return "" }
    var s = "| tokenizer | text | tokens | time | MB/s | tokens/s |\n|---|---|---|---|---|---|\n"
    for r in tok {
        s += String(format: "| %@ | %.1f MB | %d | %.3f s | %.1f | %.0f |\n", r.impl, Double(r.N) / 1e6, r.M, r.seconds,
                    (r.bytesPerSecond ?? 0) / 1e6, r.tokensPerSecond ?? 0)
    }
    return s
}
