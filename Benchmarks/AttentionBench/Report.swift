import BenchmarkSupport
import Foundation

/// A series of rows for the charts: one variant/flavour/causality at Hkv = H.
struct SeriesKey: Hashable {
    let variant: String, impl: String, causal: Bool
    var pass = "forward"
    var name: String { "\(variant) \(impl)\(causal ? " causal" : "")\(pass == "backward" ? " backward" : "")" }
}

/// The rows of one series, ordered by N.
func series(_ rows: [Row], _ key: SeriesKey) -> [Row] {
    rows.filter { $0.variant == key.variant && $0.impl == key.impl && $0.causal == key.causal && $0.pass == key.pass && $0.Hkv == $0.H }
        .sorted { $0.N < $1.N }
}

/// Power-law fits of time against N, per series, over the ranges the issues name: exact over
/// all N, BigBird 4K–64K, linear 16K and up, Infini 64K and up.
func fits(_ rows: [Row]) -> [(key: SeriesKey, fit: PowerLaw, range: ClosedRange<Int>)] {
    var keys = [SeriesKey]()
    for r in rows where ["full", "bigbird", "linear", "infini"].contains(r.variant) && r.Hkv == r.H {
        let k = SeriesKey(variant: r.variant, impl: r.impl, causal: r.causal, pass: r.pass)
        if !keys.contains(k) { keys.append(k) }
    }
    return keys.compactMap { key in
        let minN = key.variant == "linear" ? 16384 : 0
        let pts = series(rows, key).filter { $0.N >= minN }
        guard pts.count >= 2, let fit = PowerLaw.fit(x: pts.map { Double($0.N) }, y: pts.map(\.seconds)) else { return nil }
        return (key, fit, pts.first!.N...pts.last!.N)
    }
}

/// Writes the three charts into `dir`; returns their file names.
func writeCharts(_ rows: [Row], to dir: String) throws -> [String] {
    var files = [String]()
    let fitted = fits(rows)
    // 1. Time against N, log–log, exponents in the legend.
    var time = SVGChart(title: "Time per call against sequence length (H = 8, d = 64)", xLabel: "N (tokens)", yLabel: "seconds")
    for (key, fit, _) in fitted {
        let pts = series(rows, key).map { (x: Double($0.N), y: $0.seconds) }
        time.series.append(.init(name: key.name + String(format: " (N^%.2f)", fit.exponent), points: pts))
    }
    try time.render().write(toFile: dir + "/time-vs-n.svg", atomically: true, encoding: .utf8)
    files.append("time-vs-n.svg")

    // 2. Error against speedup at the largest N where errors were measured.
    // The N with the most variants' errors (ties: the largest).
    let withError = rows.filter { $0.relError != nil && $0.variant != "full" }
    let counts = Dictionary(grouping: withError, by: \.N).mapValues(\.count)
    if let n = counts.keys.max(by: { (counts[$0]!, $0) < (counts[$1]!, $1) }) {
        var chart = SVGChart(title: "Accuracy against speed at N = \(n): error vs exact attention",
                             xLabel: "speedup over exact tiled attention (×)", yLabel: "max relative error", logX: true, logY: true)
        for r in withError where r.N == n {
            let measured = rows.first { $0.variant == "full" && $0.impl == "tiled" && $0.N == n && $0.causal == r.causal && $0.Hkv == $0.H }
            guard let exact = measured?.seconds ?? ExactCache.shared.seconds[ExactCache.key(n, r.causal)] else { continue }
            let name = "\(r.variant) \(r.impl)\(r.causal ? " causal" : "")"
            chart.series.append(.init(name: name, points: [(exact / r.seconds, r.relError!)], connect: false, labels: [name]))
        }
        try chart.render().write(toFile: dir + "/error-vs-speedup.svg", atomically: true, encoding: .utf8)
        files.append("error-vs-speedup.svg")
    }

    // 3. Memory against N: workspace (and Infini's state and peak resident memory).
    var memory = SVGChart(title: "Memory beyond inputs and output against sequence length", xLabel: "N (tokens)", yLabel: "bytes")
    for (key, _, _) in fitted {
        let pts = series(rows, key).map { (x: Double($0.N), y: Double($0.workspaceBytes)) }
        memory.series.append(.init(name: key.name + " workspace", points: pts))
    }
    for impl in ["linear", "delta"] {
        let pts = rows.filter { $0.variant == "infini" && $0.impl == impl }.sorted { $0.N < $1.N }
        if pts.contains(where: { $0.peakResidentBytes != nil }) {
            memory.series.append(.init(name: "infini \(impl) peak resident (whole process)",
                                       points: pts.compactMap { r in r.peakResidentBytes.map { (Double(r.N), Double($0)) } }))
        }
    }
    try memory.render().write(toFile: dir + "/memory-vs-n.svg", atomically: true, encoding: .utf8)
    files.append("memory-vs-n.svg")
    return files
}

/// The fits as Markdown.
func fitsTable(_ rows: [Row]) -> String {
    var s = "| series | N range | time ∝ N^k: k | r² |\n|---|---|---|---|\n"
    for (key, fit, range) in fits(rows) {
        s += "| \(key.name) | \(formatLength(range.lowerBound))–\(formatLength(range.upperBound)) | \(String(format: "%.2f", fit.exponent)) | \(String(format: "%.3f", fit.r2)) |\n"
    }
    return s
}

/// Decode rows on their own terms: time per token, K/V bytes read per second, that against the
/// copy bandwidth, how much faster each KV-head count runs than the largest one at the same M and
/// type, how much faster each type runs than the float32 cache, and its error against it.
func decodeTable(_ rows: [Row]) -> String {
    let decode = rows.filter { $0.variant == "decode" }
        .sorted { ($0.M, -$0.Hkv, $0.kvType ?? "f32") < ($1.M, -$1.Hkv, $1.kvType ?? "f32") }
    guard !decode.isEmpty else { return "" }
    var s = "| M | Hkv | cache | time per token | tokens/s | K/V read | of copy bandwidth | faster than Hkv = max | faster than f32 | rel. error vs f32 |\n"
    s += "|---|---|---|---|---|---|---|---|---|---|\n"
    for r in decode {
        let type = r.kvType ?? "f32"
        let widest = decode.filter { $0.M == r.M && ($0.kvType ?? "f32") == type }.max { $0.Hkv < $1.Hkv }
        let ratio = widest.map { String(format: "%.2f×", $0.seconds / r.seconds) } ?? "–"
        let f32 = decode.first { $0.M == r.M && $0.Hkv == r.Hkv && ($0.kvType ?? "f32") == "f32" }
        let vsF32 = type == "f32" ? "–" : f32.map { String(format: "%.2f×", $0.seconds / r.seconds) } ?? "–"
        let err = r.relError.map { String(format: "%.1e", $0) } ?? "–"
        let gbs = r.bytesPerSecond.map { String(format: "%.1f GB/s", $0 * 1e-9) } ?? "–"
        let frac = r.bandwidthFraction.map { String(format: "%.0f%%", $0 * 100) } ?? "–"
        s += "| \(formatLength(r.M)) | \(r.Hkv) | \(type) | \(String(format: "%.2f ms", r.seconds * 1e3)) | \(String(format: "%.0f", 1 / r.seconds)) | \(gbs) | \(frac) | \(ratio) | \(vsF32) | \(err) |\n"
    }
    return s
}
