import AttentionTensor
import Foundation

/// One measured row of the benchmark contract (SPEC.md): shape, median seconds, effective
/// GFLOP/s, fraction of the sgemm peak measured in the same run, workspace bytes, error.
struct Row: Encodable {
    var variant: String
    var impl: String
    var B = 1, H = 1, Hkv = 1, N = 0, M = 0, d = 0
    var causal = false
    var threads = 1
    var seconds = 0.0
    var gflops = 0.0
    var peakFraction: Double?
    var workspaceBytes = 0
    var relError: Double?
    /// Extra keys.
    var runs = 0
    var minSeconds = 0.0
    var note: String?
    /// Decode rows: bytes of K/V read per second, and that over the measured copy bandwidth.
    var bytesPerSecond: Double?
    var bandwidthFraction: Double?
    /// Infini rows: state bytes, and peak resident memory of the streaming run.
    var stateBytes: Int?
    var peakResidentBytes: Int?
    var tokensPerSecond: Double?

    enum CodingKeys: String, CodingKey {
        case variant, impl, B, H, Hkv, N, M, d, causal, threads, seconds, gflops, peakFraction, workspaceBytes,
             relError, runs, minSeconds, note, bytesPerSecond, bandwidthFraction, stateBytes, peakResidentBytes,
             tokensPerSecond
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(variant, forKey: .variant); try c.encode(impl, forKey: .impl)
        try c.encode(B, forKey: .B); try c.encode(H, forKey: .H); try c.encode(Hkv, forKey: .Hkv)
        try c.encode(N, forKey: .N); try c.encode(M, forKey: .M); try c.encode(d, forKey: .d)
        try c.encode(causal, forKey: .causal); try c.encode(threads, forKey: .threads)
        try c.encode(seconds, forKey: .seconds); try c.encode(gflops, forKey: .gflops)
        try c.encode(peakFraction, forKey: .peakFraction)   // null when no peak was measured
        try c.encode(workspaceBytes, forKey: .workspaceBytes)
        try c.encode(relError, forKey: .relError)           // null when not measured
        try c.encode(runs, forKey: .runs); try c.encode(minSeconds, forKey: .minSeconds)
        try c.encodeIfPresent(note, forKey: .note)
        try c.encodeIfPresent(bytesPerSecond, forKey: .bytesPerSecond)
        try c.encodeIfPresent(bandwidthFraction, forKey: .bandwidthFraction)
        try c.encodeIfPresent(stateBytes, forKey: .stateBytes)
        try c.encodeIfPresent(peakResidentBytes, forKey: .peakResidentBytes)
        try c.encodeIfPresent(tokensPerSecond, forKey: .tokensPerSecond)
    }
}

/// Wall-clock timing: one warm-up call, then repeats until `minRuns` and about `budget` seconds,
/// at most `maxRuns`. Returns (median, min, runs).
func measure(minRuns: Int = 3, maxRuns: Int = 15, budget: Double = 1.0, _ body: () throws -> Void) rethrows
    -> (median: Double, min: Double, runs: Int) {
    try body()
    var times = [Double]()
    let start = DispatchTime.now().uptimeNanoseconds
    while times.count < maxRuns {
        let t0 = DispatchTime.now().uptimeNanoseconds
        try body()
        times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9)
        let spent = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
        if times.count >= minRuns && spent >= budget { break }
    }
    times.sort()
    return (times[times.count / 2], times[0], times.count)
}

/// Progress on stderr, so stdout stays the report.
func progress(_ s: String) {
    FileHandle.standardError.write((s + "\n").data(using: .utf8)!)
}

func formatBytes(_ b: Int) -> String {
    if b >= 1 << 30 { return String(format: "%.2f GiB", Double(b) / Double(1 << 30)) }
    if b >= 1 << 20 { return String(format: "%.1f MiB", Double(b) / Double(1 << 20)) }
    if b >= 1 << 10 { return String(format: "%.1f KiB", Double(b) / Double(1 << 10)) }
    return "\(b) B"
}

func formatLength(_ n: Int) -> String {
    n >= 1024 && n % 1024 == 0 ? "\(n / 1024)K" : "\(n)"
}

/// The Markdown table printed on stdout.
func markdownTable(_ rows: [Row]) -> String {
    var s = "| variant | impl | B | H | Hkv | N | M | d | causal | threads | time | GFLOP/s | % peak | workspace | rel. error |\n"
    s += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    for r in rows {
        let time = r.seconds < 1e-3 ? String(format: "%.1f µs", r.seconds * 1e6)
            : r.seconds < 1 ? String(format: "%.2f ms", r.seconds * 1e3) : String(format: "%.3f s", r.seconds)
        let peak = r.peakFraction.map { String(format: "%.0f%%", $0 * 100) } ?? "–"
        let err = r.relError.map { String(format: "%.1e", $0) } ?? "–"
        s += "| \(r.variant) | \(r.impl) | \(r.B) | \(r.H) | \(r.Hkv) | \(formatLength(r.N)) | \(formatLength(r.M)) | \(r.d) | \(r.causal ? "yes" : "no") | \(r.threads) | \(time) | \(String(format: "%.1f", r.gflops)) | \(peak) | \(formatBytes(r.workspaceBytes)) | \(err) |\n"
    }
    return s
}
